package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// serveOnce serves h on 127.0.0.1 until the test ends and returns the
// ws:// URL of an agent's stream on it.
func serveOnce(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return "ws://" + ln.Addr().String() + "/agent/x/stream/t"
}

// idleStreamPair returns an idle stream as the agent holds it, a
// WebSocket leg, and the server's end of it, over 127.0.0.1.
func idleStreamPair(t *testing.T) (agentEnd *leg.Conn, serverEnd *websocket.Conn) {
	t.Helper()
	accepted := make(chan *websocket.Conn, 1)
	url := serveOnce(t, func(w http.ResponseWriter, r *http.Request) {
		if c, err := wsconn.Accept(w, r, wire.StreamProtocol); err == nil {
			accepted <- c
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agentEnd, err := leg.Dial(ctx, url, leg.DialOptions{Protocols: []string{wire.StreamProtocol}})
	if err != nil {
		t.Fatal(err)
	}
	serverEnd = <-accepted
	t.Cleanup(func() { agentEnd.CloseNow(); serverEnd.CloseNow() })
	return agentEnd, serverEnd
}

// idleRawPair returns an idle stream as the agent holds it, a raw stream
// leg, and the server's end of it, over 127.0.0.1.
func idleRawPair(t *testing.T) (agentEnd *leg.Conn, serverEnd net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	url := serveOnce(t, func(w http.ResponseWriter, r *http.Request) {
		if c, err := leg.Accept(w, r, wire.StreamProtocol); err == nil {
			accepted <- c.Relayed(context.Background())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agentEnd, err := leg.Dial(ctx, url, leg.DialOptions{Protocols: []string{wire.StreamProtocol}, Raw: true})
	if err != nil {
		t.Fatal(err)
	}
	serverEnd = <-accepted
	t.Cleanup(func() { agentEnd.CloseNow(); serverEnd.Close() })
	return agentEnd, serverEnd
}

// TestAwaitAssign: an idle stream is served once the server assigns a
// client to it, with the protocol the assignment names; anything else
// first on it is refused with close code 4002.
func TestAwaitAssign(t *testing.T) {
	assign, _ := wire.Encode(wire.Message{Type: wire.TypeAssign, Assign: &wire.Assign{Protocol: "converge.resume.v1"}})
	dial, _ := wire.Encode(wire.Message{Type: wire.TypeDial, Dial: &wire.Dial{Token: wire.NewToken()}})
	for _, tc := range []struct {
		name     string
		typ      websocket.MessageType
		msg      []byte
		protocol string // "" with ok false: refused
		ok       bool
	}{
		{"assignment", websocket.MessageText, assign, "converge.resume.v1", true},
		{"client bytes before the assignment", websocket.MessageBinary, []byte("SSH-2.0-x\r\n"), "", false},
		{"another message", websocket.MessageText, dial, "", false},
		{"garbage", websocket.MessageText, []byte("{"), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agentEnd, serverEnd := idleStreamPair(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := serverEnd.Write(ctx, tc.typ, tc.msg); err != nil {
				t.Fatal(err)
			}
			read := make(chan error, 1) // the server reads its end, as it does while a stream is idle
			go func() { _, _, err := serverEnd.Read(ctx); read <- err }()
			got, err := awaitAssign(ctx, agentEnd)
			if tc.ok {
				if err != nil || got != tc.protocol {
					t.Fatalf("awaitAssign = %q, %v; want %q", got, err, tc.protocol)
				}
				return
			}
			if err == nil {
				t.Fatalf("awaitAssign = %q, want an error", got)
			}
			if err := <-read; websocket.CloseStatus(err) != wsconn.CodeRefused {
				t.Errorf("the server's end read %v, want close 4002", err)
			}
		})
	}
}

// TestAwaitAssignEndsWithControl: an idle stream belongs to its control
// connection; when that ends (ctx), the wait ends and the stream closes.
func TestAwaitAssignEndsWithControl(t *testing.T) {
	agentEnd, serverEnd := idleStreamPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := awaitAssign(ctx, agentEnd); done <- err }()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("awaitAssign returned no error when its control connection ended")
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if _, _, err := serverEnd.Read(rctx); err == nil {
		t.Error("the server's end is still open")
	}
}

// TestAwaitAssignRaw: an idle raw stream is served once the server's
// assignment record comes, after any keepalive records, and the bytes
// behind the record are left for the stream; anything else first ends
// the wait, as does the control connection's end.
func TestAwaitAssignRaw(t *testing.T) {
	assign, _ := wire.AppendRecord(nil, wire.Message{Type: wire.TypeAssign, Assign: &wire.Assign{Protocol: "converge.resume.v1"}})
	dial, _ := wire.AppendRecord(nil, wire.Message{Type: wire.TypeDial, Dial: &wire.Dial{Token: wire.NewToken()}})
	for _, tc := range []struct {
		name string
		sent []byte
		ok   bool
	}{
		{"assignment", append(append(append([]byte{}, wire.Keepalive...), assign...), "SSH"...), true},
		{"client bytes before the assignment", []byte("SSH-2.0-x\r\n"), false},
		{"another message", dial, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agentEnd, serverEnd := idleRawPair(t)
			if _, err := serverEnd.Write(tc.sent); err != nil {
				t.Fatal(err)
			}
			got, err := awaitAssign(context.Background(), agentEnd)
			if !tc.ok {
				if err == nil {
					t.Fatalf("awaitAssign = %q, want an error", got)
				}
				return
			}
			if err != nil || got != "converge.resume.v1" {
				t.Fatalf("awaitAssign = %q, %v; want converge.resume.v1", got, err)
			}
			rest := make([]byte, 3)
			if _, err := io.ReadFull(agentEnd.NetConn(context.Background()), rest); err != nil || string(rest) != "SSH" {
				t.Errorf("after the assignment: %q, %v; want the stream's bytes", rest, err)
			}
		})
	}
	t.Run("control ends", func(t *testing.T) {
		agentEnd, serverEnd := idleRawPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := awaitAssign(ctx, agentEnd); done <- err }()
		cancel()
		if err := <-done; err == nil {
			t.Fatal("awaitAssign returned no error when its control connection ended")
		}
		serverEnd.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := serverEnd.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the server's end: %v, want closed", err)
		}
	})
}

// TestPoolStreamsCapped: a relay that asks for ever more idle streams
// gets wire.MaxIdleStreams of them, no more (issue 18, finding 10).
func TestPoolStreamsCapped(t *testing.T) {
	const asked = wire.MaxIdleStreams + 20
	var mu sync.Mutex
	opened := 0
	reached := make(chan struct{})
	hold, release := context.WithCancel(context.Background())
	defer release()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wire.AgentPath("myjob") {
			c, err := leg.Accept(w, r, wire.StreamProtocol)
			if err != nil {
				return
			}
			mu.Lock()
			opened++
			if opened == wire.MaxIdleStreams {
				close(reached)
			}
			mu.Unlock()
			<-hold.Done()
			c.CloseNow()
			return
		}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{wire.ControlProtocolV2}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		if _, err := wire.Receive(ctx, c); err != nil {
			return
		}
		wire.Send(ctx, c, wire.Message{Type: wire.TypeWelcome, Welcome: &wire.Welcome{SSHUser: "ciuser", Secret: strings.Repeat("ab", 16)}})
		for i := range asked {
			tok := fmt.Sprintf("%032x", i)
			if wire.Send(ctx, c, wire.Message{Type: wire.TypePool, Pool: &wire.Pool{Token: tok}}) != nil {
				return
			}
		}
		<-hold.Done()
	}))
	defer srv.Close()
	_, key := sshtest.NewKey(t, "user")
	a, err := New(Config{Server: "ws" + strings.TrimPrefix(srv.URL, "http"), ID: "myjob", Dir: t.TempDir(), AuthorizedKeys: key, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-reached:
	case err := <-done:
		t.Fatalf("the agent ended before opening %d idle streams: %v", wire.MaxIdleStreams, err)
	}
	cancel() // Run returns once every stream goroutine it started has ended
	<-done
	release()
	mu.Lock()
	defer mu.Unlock()
	if opened != wire.MaxIdleStreams {
		t.Fatalf("asked for %d idle streams, the agent opened %d; want %d", asked, opened, wire.MaxIdleStreams)
	}
}
