package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// dialControl upgrades /agent/id and stops there: nothing is sent. hdr
// may carry a secret or an X-Forwarded-For. A refusal is returned, not
// fatal.
func dialControl(t testing.TB, wsBase, id string, hdr http.Header) (*websocket.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, wsBase+"/agent/"+id, wsconn.Options{Header: hdr, Subprotocols: []string{wire.ControlProtocol}})
	if err == nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, err
}

// hello completes the agent's side of the handshake on c and returns the
// server's welcome.
func hello(t testing.TB, id string, c *websocket.Conn) wire.Welcome {
	t.Helper()
	a := &fakeAgent{id: id, ws: c}
	a.send(t, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test"}})
	m := a.read(t)
	if m.Type != wire.TypeWelcome {
		t.Fatalf("agent %s: got %q, want welcome", id, m.Type)
	}
	return *m.Welcome
}

// registerAgent is a whole registration: upgrade, hello, welcome.
func registerAgent(t testing.TB, wsBase, id string, hdr http.Header) (*websocket.Conn, wire.Welcome) {
	t.Helper()
	c, err := dialControl(t, wsBase, id, hdr)
	if err != nil {
		t.Fatalf("agent %s: %v", id, err)
	}
	return c, hello(t, id, c)
}

// gone waits until the server has unregistered an agent whose connection
// ended: the handler notifies watchers after its Unregister.
func gone(t testing.TB, notices <-chan struct{}) {
	t.Helper()
	select {
	case <-notices:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not notice the agent left")
	}
}

func watchChanges(t testing.TB, s *Server) <-chan struct{} {
	t.Helper()
	notices, stop, err := s.changes.watch()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return notices
}

func wantRefused(t testing.TB, err error, status int, says string) {
	t.Helper()
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != status || !strings.Contains(re.Message, says) {
		t.Fatalf("got %v; want a %d refusal saying %q", err, status, says)
	}
}

// TestDroppedUpgradeReservesNothing: an upgrade to /agent/X that drops
// before its hello must not reserve X (issue 10, finding 1): the real
// agent that asks for X next gets it.
func TestDroppedUpgradeReservesNothing(t *testing.T) {
	r := runServer(t)
	notices := watchChanges(t, r.Server)
	squat, err := dialControl(t, r.ws(), "squatted", nil)
	if err != nil {
		t.Fatal(err)
	}
	squat.CloseNow()
	gone(t, notices)
	c, _ := registerAgent(t, r.ws(), "squatted", nil)
	c.CloseNow()
}

// TestReservationsCountAgainstAddrLimit: an ID kept for an agent that
// dropped is charged to the address that held the agent, so one address
// cannot pile up reservations beyond --max-agents-per-addr; the agent
// itself, proving its secret, still comes back.
func TestReservationsCountAgainstAddrLimit(t *testing.T) {
	r := runServer(t, func(c *Config) { c.MaxAgentsPerAddr = 1 })
	notices := watchChanges(t, r.Server)
	c, welcome := registerAgent(t, r.ws(), "first", nil)
	c.CloseNow()
	gone(t, notices)

	_, err := dialControl(t, r.ws(), "second", nil)
	wantRefused(t, err, http.StatusTooManyRequests, "too many agents")

	hdr := http.Header{wire.SecretHeader: {welcome.Secret}}
	back, again := registerAgent(t, r.ws(), "first", hdr)
	if again.Secret != welcome.Secret {
		t.Errorf("back with secret: got secret %q, want %q", again.Secret, welcome.Secret)
	}
	back.CloseNow()
}
