package leg

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// acceptServer accepts legs of either kind with protocol "p" and sends
// each on accepted.
func acceptServer(t *testing.T, accepted chan<- *Conn) string {
	return serve(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, "p")
		if err != nil {
			t.Error(err)
			return
		}
		accepted <- c
	})
}

func dial(t *testing.T, url string, opts DialOptions) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("Dial %s %+v: %v", url, opts, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// TestLegOfEitherKind: Dial and Accept make a leg of the kind asked for,
// with the protocol negotiated; a control message written on one end is
// read on the other, and the stream's bytes follow it. The server's end
// of a raw leg is the *net.TCPConn itself, which splice moves in the
// kernel.
func TestLegOfEitherKind(t *testing.T) {
	accepted := make(chan *Conn, 1)
	url := acceptServer(t, accepted)
	for _, raw := range []bool{true, false} {
		client := dial(t, url, DialOptions{Protocols: []string{"p"}, Raw: raw})
		server := <-accepted
		t.Cleanup(func() { server.CloseNow() })
		want := map[bool]string{true: KindRaw, false: KindWebSocket}[raw]
		if client.Kind() != want || server.Kind() != want {
			t.Fatalf("raw %v: kinds %s and %s, want %s", raw, client.Kind(), server.Kind(), want)
		}
		if client.Protocol() != "p" || server.Protocol() != "p" {
			t.Errorf("raw %v: protocols %q and %q, want p", raw, client.Protocol(), server.Protocol())
		}
		if raw {
			if _, ok := server.Relayed(context.Background()).(*net.TCPConn); !ok {
				t.Error("the server's end of a raw leg is not the *net.TCPConn, so it cannot be spliced in the kernel")
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m := wire.Message{Type: wire.TypeAssign, Assign: &wire.Assign{Protocol: "x"}}
		go server.WriteMessage(ctx, m)
		got, err := client.ReadMessage(ctx)
		if err != nil || got.Type != wire.TypeAssign || got.Assign.Protocol != "x" {
			t.Fatalf("raw %v: ReadMessage = %+v, %v; want the assignment", raw, got, err)
		}
		go io.WriteString(client.NetConn(ctx), "bytes")
		b := make([]byte, 5)
		if _, err := io.ReadFull(server.Relayed(ctx), b); err != nil || string(b) != "bytes" {
			t.Errorf("raw %v: after the message read %q, %v; want the stream's bytes", raw, b, err)
		}
		cancel()
	}
}

// TestDialFallback: behind a proxy that refuses raw streams, Dial falls
// back to a working WebSocket and, with a Fallback, stops asking for raw
// streams; without one it reports ErrNotSwitched.
func TestDialFallback(t *testing.T) {
	accepted := make(chan *Conn, 1)
	var rawAsked atomic.Int32
	url := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if Requested(r) {
			rawAsked.Add(1)
			http.Error(w, "WebSockets only", http.StatusBadRequest)
			return
		}
		if c, err := Accept(w, r, "p"); err == nil {
			accepted <- c
		}
	})
	if _, err := Dial(context.Background(), url, DialOptions{Raw: true}); !errors.Is(err, ErrNotSwitched) {
		t.Fatalf("Dial without Fallback: %v, want ErrNotSwitched", err)
	}
	fb := &Fallback{}
	for i := range 2 {
		c := dial(t, url, DialOptions{Protocols: []string{"p"}, Raw: true, Fallback: fb})
		server := <-accepted
		if c.Kind() != KindWebSocket || c.Protocol() != "p" {
			t.Errorf("dial %d: a %s leg with protocol %q, want a WebSocket with p", i, c.Kind(), c.Protocol())
		}
		go server.WriteMessage(context.Background(), wire.Message{Type: wire.TypeAssign, Assign: &wire.Assign{}})
		if _, err := c.ReadMessage(context.Background()); err != nil {
			t.Errorf("dial %d: the WebSocket does not work: %v", i, err)
		}
		server.CloseNow()
	}
	if n := rawAsked.Load(); n != 2 {
		t.Errorf("raw streams asked for %d times, want 2: once without a Fallback, once before it remembered", n)
	}
}

// TestDialPlainRaw: a raw stream for no protocol is not switched to (a
// plain stream needs pings to pass proxies): without a Fallback Dial
// reports ErrNotSwitched; with one it gets a WebSocket and remembers.
func TestDialPlainRaw(t *testing.T) {
	accepted := make(chan *Conn, 1)
	url := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if c, err := Accept(w, r, ""); err == nil {
			accepted <- c
		}
	})
	if _, err := Dial(context.Background(), url, DialOptions{Raw: true}); !errors.Is(err, ErrNotSwitched) {
		t.Errorf("without a Fallback: %v, want ErrNotSwitched", err)
	}
	fb := &Fallback{}
	c := dial(t, url, DialOptions{Raw: true, Fallback: fb})
	if c.Kind() != KindWebSocket || !c.Carries("") || !fb.wsOnly() {
		t.Errorf("with a Fallback: a %s leg, remembered %v; want a WebSocket, remembered", c.Kind(), fb.wsOnly())
	}
	if s := <-accepted; s.Kind() != KindWebSocket {
		t.Errorf("the server accepted a %s leg, want only the WebSocket", s.Kind())
	}
}

// TestFallbackFor: a Fallback with For asks for raw streams again after
// that long; without, never again.
func TestFallbackFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var nilFallback *Fallback
		forever, minute := &Fallback{}, &Fallback{For: time.Minute}
		if nilFallback.wsOnly() || forever.wsOnly() || minute.wsOnly() {
			t.Fatal("a fresh Fallback dials WebSockets only")
		}
		forever.remember()
		minute.remember()
		time.Sleep(time.Minute - time.Nanosecond)
		if !forever.wsOnly() || !minute.wsOnly() {
			t.Fatal("a Fallback forgot before its time")
		}
		time.Sleep(time.Nanosecond)
		if !forever.wsOnly() || minute.wsOnly() {
			t.Errorf("after a minute: forever %v, minute %v; want true, false", forever.wsOnly(), minute.wsOnly())
		}
	})
}

// TestIdle: an idle leg of either kind waits until taken, is assigned,
// and then relays the peer's bytes from the first (a raw one as the
// *net.TCPConn, for the kernel splice); a raw one whose peer speaks
// before its assignment ends with ErrSpokeEarly.
func TestIdle(t *testing.T) {
	accepted := make(chan *Conn, 1)
	url := acceptServer(t, accepted)
	for _, raw := range []bool{true, false} {
		client := dial(t, url, DialOptions{Protocols: []string{"p"}, Raw: raw})
		server := <-accepted
		t.Cleanup(func() { server.CloseNow() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		idle := server.Idle()
		waited := make(chan error, 1)
		go func() { waited <- idle.Wait(ctx, time.Hour) }()
		idle.Take()
		if err := idle.Assign(ctx, wire.Message{Type: wire.TypeAssign, Assign: &wire.Assign{Protocol: "x"}}); err != nil {
			t.Fatalf("raw %v: Assign: %v", raw, err)
		}
		if m, err := client.ReadMessage(ctx); err != nil || m.Type != wire.TypeAssign {
			t.Fatalf("raw %v: ReadMessage = %+v, %v; want the assignment", raw, m, err)
		}
		if raw {
			if _, ok := idle.Relayed(ctx).(*net.TCPConn); !ok {
				t.Error("a taken raw idle leg is not the *net.TCPConn, so it cannot be spliced in the kernel")
			}
		}
		go io.WriteString(client.NetConn(ctx), "first bytes")
		b := make([]byte, 11)
		if _, err := io.ReadFull(idle.Relayed(ctx), b); err != nil || string(b) != "first bytes" {
			t.Errorf("raw %v: relayed %q, %v; want the peer's first bytes", raw, b, err)
		}
		if err := <-waited; err != nil {
			t.Errorf("raw %v: Wait = %v, want nil once taken", raw, err)
		}
		cancel()
	}
	client := dial(t, url, DialOptions{Protocols: []string{"p"}, Raw: true})
	server := <-accepted
	t.Cleanup(func() { server.CloseNow() })
	io.WriteString(client.NetConn(context.Background()), "too soon")
	if err := server.Idle().Wait(context.Background(), time.Hour); !errors.Is(err, ErrSpokeEarly) {
		t.Errorf("Wait with a peer that spoke early = %v, want ErrSpokeEarly", err)
	}
}
