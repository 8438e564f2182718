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

	"github.com/converge-ci/converge/server/internal/registry"
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

// waitUntil polls cond until it holds, failing the test after 10 s.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
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
	was, _ := r.tokens.Verify("first", welcome.Secret, time.Now())
	if now, err := r.tokens.Verify("first", again.Secret, time.Now()); err != nil || now != was {
		t.Errorf("back with its secret: new secret proves %+v, %v; want the same tenure %+v", now, err, was)
	}
	back.CloseNow()
}

// TestRestartedServerGivesIDBack is the restart race (issue 11) at the
// handler: a server restarted with the same key forgot its agents; a
// rogue asking first gets the ID, and loses it, with close 4001, as soon
// as the agent presents its secret. From then on the ID is the agent's,
// connected or reserved, whatever the rogue presents.
func TestRestartedServerGivesIDBack(t *testing.T) {
	key := strings.Repeat("5a", 32)
	withKey := func(c *Config) { c.ClusterKey = key }
	before := runServer(t, withKey)
	first, welcome := registerAgent(t, before.ws(), "victim", nil)
	first.CloseNow()
	if err := before.shutdown(); err != nil {
		t.Fatal(err)
	}

	r := runServer(t, withKey)
	rogue, rogueWelcome := registerAgent(t, r.ws(), "victim", nil)
	agent, _ := registerAgent(t, r.ws(), "victim", http.Header{wire.SecretHeader: {welcome.Secret}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := rogue.Read(ctx); websocket.CloseStatus(err) != wsconn.CodeReplaced {
		t.Fatalf("the rogue's connection ended with %v; want close %d (replaced)", err, wsconn.CodeReplaced)
	}
	rogueTries := map[string]http.Header{
		"no secret":       nil,
		"a forged secret": {wire.SecretHeader: {strings.Repeat("0", 32)}},
		"its own secret":  {wire.SecretHeader: {rogueWelcome.Secret}},
	}
	for what, hdr := range rogueTries {
		_, err := dialControl(t, r.ws(), "victim", hdr)
		var re *wsconn.RefusedError
		if !errors.As(err, &re) || re.Status != http.StatusConflict || !strings.Contains(re.Message, "already used") {
			t.Errorf("rogue with %s while the agent is connected: %v; want 409 saying already used", what, err)
		}
	}
	agent.CloseNow() // the agent's link drops: its ID stays reserved for it
	waitUntil(t, "the server to notice the agent left", func() bool { return r.agent("victim") == nil })
	for what, hdr := range rogueTries {
		_, err := dialControl(t, r.ws(), "victim", hdr)
		var re *wsconn.RefusedError
		if !errors.As(err, &re) || re.Status != http.StatusConflict || !strings.Contains(re.Message, "reserved") {
			t.Errorf("rogue with %s while the ID is reserved: %v; want 409 saying reserved", what, err)
		}
	}
	back, _ := registerAgent(t, r.ws(), "victim", http.Header{wire.SecretHeader: {welcome.Secret}})
	back.CloseNow()
}

// TestForeignSecretOnFreeID: a secret this server cannot verify (another
// key, say) is no reason to refuse a free ID; the agent gets a fresh one.
func TestForeignSecretOnFreeID(t *testing.T) {
	r := runServer(t)
	other := registry.NewTokens([]byte(strings.Repeat("k", 32)), time.Minute)
	foreign := other.Sign("newcomer", registry.NewTenure(time.Now()), time.Now())
	c, welcome := registerAgent(t, r.ws(), "newcomer", http.Header{wire.SecretHeader: {foreign}})
	if welcome.Secret == foreign {
		t.Error("the server handed back a secret it cannot verify")
	}
	if _, err := r.tokens.Verify("newcomer", welcome.Secret, time.Now()); err != nil {
		t.Errorf("the fresh secret: %v", err)
	}
	c.CloseNow()
}

// TestTokensRefreshed: a connected agent gets a freshly signed secret of
// the same tenure in a new welcome, so its secret outlives a long link.
func TestTokensRefreshed(t *testing.T) {
	r := runServer(t)
	c, welcome := registerAgent(t, r.ws(), "long-lived", nil)
	first, err := r.tokens.Verify("long-lived", welcome.Secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := r.agent("long-lived")
	issued := a.issued.Load()
	r.refreshTokens(context.Background(), time.Now().Add(registry.TokenRefresh))
	m := (&fakeAgent{id: "long-lived", ws: c}).read(t)
	if m.Type != wire.TypeWelcome {
		t.Fatalf("got %q, want a welcome with a fresh secret", m.Type)
	}
	again, err := r.tokens.Verify("long-lived", m.Welcome.Secret, time.Now())
	if err != nil || again.Tenure != first.Tenure || m.Welcome.SSHUser != welcome.SSHUser {
		t.Errorf("refreshed welcome %+v proves %+v, %v; want the tenure %+v and user %q", m.Welcome, again, err, first.Tenure, welcome.SSHUser)
	}
	if a.issued.Load() <= issued {
		t.Error("the refresh was not recorded")
	}
}

// TestDisplacedBeforeHelloGetsNoWelcome: a holder displaced between its
// upgrade and its hello is closed with 4001 when it says hello, and is
// never welcomed (it would believe it holds the ID).
func TestDisplacedBeforeHelloGetsNoWelcome(t *testing.T) {
	key := strings.Repeat("a5", 32)
	withKey := func(c *Config) { c.ClusterKey = key }
	before := runServer(t, withKey)
	first, welcome := registerAgent(t, before.ws(), "victim", nil)
	first.CloseNow()
	if err := before.shutdown(); err != nil {
		t.Fatal(err)
	}

	r := runServer(t, withKey)
	slow, err := dialControl(t, r.ws(), "victim", nil)
	if err != nil {
		t.Fatal(err)
	}
	registerAgent(t, r.ws(), "victim", http.Header{wire.SecretHeader: {welcome.Secret}})
	(&fakeAgent{id: "victim", ws: slow}).send(t, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, b, err := slow.Read(ctx); websocket.CloseStatus(err) != wsconn.CodeReplaced {
		t.Fatalf("the displaced holder read %q, %v; want close %d (replaced)", b, err, wsconn.CodeReplaced)
	}
}

// TestControlMessagesRefused: a control connection whose first message is
// binary, does not decode, or is no hello is closed with CodeRefused, the
// reason saying why.
func TestControlMessagesRefused(t *testing.T) {
	r := runServer(t)
	for _, tc := range []struct {
		name string
		typ  websocket.MessageType
		msg  string
		says string
	}{
		{"binary", websocket.MessageBinary, `{"type":"hello"}`, "control messages are text"},
		{"garbage", websocket.MessageText, `{"type":`, "invalid control message"},
		{"status first", websocket.MessageText, `{"type":"status","status":{}}`, "first message must be hello"},
	} {
		c, err := dialControl(t, r.ws(), "refused-"+strings.ReplaceAll(tc.name, " ", "-"), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.Write(ctx, tc.typ, []byte(tc.msg)); err != nil {
			t.Fatalf("%s: write: %v", tc.name, err)
		}
		_, _, err = c.Read(ctx)
		cancel()
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != wsconn.CodeRefused || !strings.Contains(ce.Reason, tc.says) {
			t.Errorf("%s: read after sending %q: %v; want close %d saying %q", tc.name, tc.msg, err, wsconn.CodeRefused, tc.says)
		}
	}
}
