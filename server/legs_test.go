package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// dialLeg opens one leg of a stream to url, raw or as a WebSocket, and
// returns its bytes and the protocol the server chose.
func dialLeg(t *testing.T, url string, raw bool, protocols ...string) (net.Conn, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := leg.Dial(ctx, url, leg.DialOptions{Protocols: protocols, Raw: raw}) // no Fallback: raw or fail
	if err != nil {
		t.Fatalf("dial %s (raw %v): %v", url, raw, err)
	}
	if got := c.Kind() == leg.KindRaw; got != raw {
		t.Fatalf("dial %s: got a %s leg, want raw %v", url, c.Kind(), raw)
	}
	nc := c.Relayed(context.Background())
	t.Cleanup(func() { nc.Close() })
	return nc, c.Protocol()
}

// TestLegs relays a stream for each mix of raw and WebSocket legs: the
// protocol is negotiated the same way, bytes pass unchanged both ways and
// show in the metrics.
func TestLegs(t *testing.T) {
	r := runServer(t)
	for i, tc := range []struct{ client, agent bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("client raw %v, agent raw %v", tc.client, tc.agent), func(t *testing.T) {
			id := fmt.Sprintf("legs-%d", i)
			a := offering(t, r.ws(), id, "converge.resume.v1")
			type result struct {
				conn  net.Conn
				proto string
			}
			client := make(chan result, 1)
			go func() {
				c, proto := dialLeg(t, r.ws()+"/client/"+id, tc.client, "other", "converge.resume.v1")
				client <- result{c, proto}
			}()
			m := a.read(t)
			if m.Type != wire.TypeDial || m.Dial.Protocol != "converge.resume.v1" {
				t.Fatalf("agent got %+v, want a dial for converge.resume.v1", m)
			}
			ac, proto := dialLeg(t, r.ws()+"/agent/"+id+"/stream/"+m.Dial.Token, tc.agent, wire.StreamProtocol)
			if proto != wire.StreamProtocol {
				t.Errorf("agent's leg: protocol %q, want %q", proto, wire.StreamProtocol)
			}
			cl := <-client
			if cl.proto != "converge.resume.v1" {
				t.Errorf("client's leg: protocol %q, want converge.resume.v1", cl.proto)
			}
			before := value(t, scrape(t, r.http()), "converge_relayed_bytes_total", "direction", "to_agent")
			up, down := strings.Repeat("u", 300<<10), strings.Repeat("d", 200<<10)
			go io.WriteString(cl.conn, up)
			go io.WriteString(ac, down)
			for _, x := range []struct {
				c    net.Conn
				want string
			}{{ac, up}, {cl.conn, down}} {
				got := make([]byte, len(x.want))
				if _, err := io.ReadFull(x.c, got); err != nil || string(got) != x.want {
					t.Fatalf("read %d bytes: %v", len(x.want), err)
				}
			}
			// The count follows the bytes, so wait for it.
			for deadline := time.Now().Add(10 * time.Second); ; {
				d := value(t, scrape(t, r.http()), "converge_relayed_bytes_total", "direction", "to_agent") - before
				if d == float64(len(up)) {
					break
				}
				if d > float64(len(up)) || time.Now().After(deadline) {
					t.Fatalf("to_agent grew by %v, want %d", d, len(up))
				}
				time.Sleep(10 * time.Millisecond)
			}
			cl.conn.Close()
			if _, err := ac.Read(make([]byte, 1)); err == nil {
				t.Error("the agent's leg stayed open after the client left")
			}
		})
	}
}

// TestRawRefusalIsFinal: the server refuses a raw request as it refuses a
// WebSocket, and says it speaks raw streams, so the client reports the
// refusal instead of retrying as a WebSocket.
func TestRawRefusalIsFinal(t *testing.T) {
	r := runServer(t)
	for _, path := range []string{"/client/nobody", "/agent/nobody/stream/" + strings.Repeat("a", 32)} {
		_, err := leg.Dial(context.Background(), r.ws()+path, leg.DialOptions{Raw: true, Fallback: &leg.Fallback{}})
		var re *wsconn.RefusedError
		if !errors.As(err, &re) || re.Status != http.StatusNotFound {
			t.Errorf("%s: err = %v, want a 404 refusal", path, err)
		}
	}
}

// TestDrainClosesRawLegs: a drain closes raw legs too (they have no close
// code to send) and does not wait for them to end by themselves.
func TestDrainClosesRawLegs(t *testing.T) {
	r := runServer(t)
	a := offering(t, r.ws(), "drained", "converge.resume.v1")
	client := make(chan net.Conn, 1)
	go func() { c, _ := dialLeg(t, r.ws()+"/client/drained", true, "converge.resume.v1"); client <- c }()
	m := a.read(t)
	go func() { // answer the drain's close handshake
		for {
			if _, _, err := a.ws.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	ac, _ := dialLeg(t, r.ws()+"/agent/drained/stream/"+m.Dial.Token, true, wire.StreamProtocol)
	cl := <-client
	if err := r.shutdown(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for name, c := range map[string]net.Conn{"client": cl, "agent": ac} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s's leg after the drain: %v, want closed", name, err)
		}
	}
}

// earlyClient dials url for a raw stream of converge.resume.v1 whose
// first bytes leave with the request (leg.DialOptions.Early), writes
// early before the server can have answered, and returns the stream.
func earlyClient(t *testing.T, url string, early []byte) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := leg.Dial(ctx, url, leg.DialOptions{Protocols: []string{"converge.resume.v1"}, Raw: true, Early: true})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	nc := c.NetConn(context.Background())
	t.Cleanup(func() { nc.Close() })
	if _, err := nc.Write(early); err != nil {
		t.Fatalf("write before the answer: %v", err)
	}
	return nc
}

// TestEarlyBytesReachTheAgent: a client that sends its first bytes with
// its request, before the 101, has them relayed to the agent's leg first
// and byte for byte (the server holds them while the agent dials back),
// and the stream goes on both ways; the agent's leg is raw or a
// WebSocket.
func TestEarlyBytesReachTheAgent(t *testing.T) {
	r := runServer(t)
	for i, agentRaw := range []bool{true, false} {
		id := fmt.Sprintf("early-%d", i)
		a := offering(t, r.ws(), id, "converge.resume.v1")
		early := []byte(fmt.Sprintf("hello and SSH-2.0-banner %d\r\n", i))
		cl := earlyClient(t, r.ws()+"/client/"+id, early)
		m := a.read(t)
		if m.Type != wire.TypeDial {
			t.Fatalf("agent got %+v, want a dial", m)
		}
		ac, _ := dialLeg(t, r.ws()+"/agent/"+id+"/stream/"+m.Dial.Token, agentRaw, wire.StreamProtocol)
		got := make([]byte, len(early))
		if _, err := io.ReadFull(ac, got); err != nil || string(got) != string(early) {
			t.Fatalf("agent raw %v: the agent read %q, %v; want the early bytes %q", agentRaw, got, err, early)
		}
		go io.WriteString(ac, "answer")
		got = make([]byte, len("answer"))
		if _, err := io.ReadFull(cl, got); err != nil || string(got) != "answer" {
			t.Fatalf("agent raw %v: the client read %q, %v; want the agent's answer", agentRaw, got, err)
		}
		io.WriteString(cl, "more")
		if _, err := io.ReadFull(ac, got[:4]); err != nil || string(got[:4]) != "more" {
			t.Errorf("agent raw %v: then %q, %v; want the client's next bytes", agentRaw, got[:4], err)
		}
	}
}

// TestEarlyBytesForAPlainAgent: an agent that offers no stream protocol
// gets no raw stream, so a client's early bytes, which are for the
// protocol it offered, are not relayed to it: the server answers without
// switching, and the client (with a Fallback) asks for a WebSocket, which
// cannot give that protocol either, and says so.
func TestEarlyBytesForAPlainAgent(t *testing.T) {
	r := runServer(t)
	offering(t, r.ws(), "plain-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := leg.Dial(ctx, r.ws()+"/client/plain-agent", leg.DialOptions{Protocols: []string{"converge.resume.v1"}, Raw: true, Early: true, Fallback: &leg.Fallback{}})
	if err != nil {
		t.Fatal(err)
	}
	nc := c.NetConn(context.Background())
	defer nc.Close()
	nc.Write([]byte("resume hello"))
	if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, leg.ErrNotOffered) {
		t.Errorf("Read = %v, want ErrNotOffered", err)
	}
}
