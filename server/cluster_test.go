package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/redistest"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server/internal/registry"
)

const testClusterKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// runReplicas runs n replicas sharing one real Redis.
func runReplicas(t *testing.T, n int, mods ...func(*Config)) ([]*running, *redistest.Server) {
	t.Helper()
	rs := redistest.Start(t)
	var out []*running
	for range n {
		out = append(out, runServer(t, append([]func(*Config){func(c *Config) {
			c.Redis, c.Advertise, c.ClusterKey = rs.URL(), "http://127.0.0.1:0", testClusterKey
			c.SessionsPassword = "pw"
			c.DrainDelay = -1 // the drain test sets its own
		}}, mods...)...))
	}
	return out, rs
}

// echoThrough dials id's client endpoint at wsBase offering protocols,
// checks an echo round trip and returns the negotiated subprotocol.
func echoThrough(t *testing.T, wsBase, id string, protocols ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, wsBase+wire.ClientPath(id), wsconn.Options{Subprotocols: protocols})
	if err != nil {
		t.Fatalf("client of %s via %s: %v", id, wsBase, err)
	}
	defer c.CloseNow()
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	msg := []byte("through the cluster " + id)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo via %s: %q, %v; want %q", wsBase, got, err, msg)
	}
	return c.Subprotocol()
}

// TestClusterForwardsClientsAndStreams: a client reaches an agent held
// by another replica, and the agent's dial-back stream may land on
// either; the agent's subprotocol choice passes through.
func TestClusterForwardsClientsAndStreams(t *testing.T) {
	reps, _ := runReplicas(t, 2)
	a, b := reps[0], reps[1]
	ag := dialAgentOffering(t, a.ws(), "far", wire.Info{Hostname: "far-host"}, "converge.resume.v1")

	// Client on b, stream back through b: both forwarded to a.
	done := make(chan struct{})
	go func() { defer close(done); ag.echoStream(t, b.ws()) }()
	if p := echoThrough(t, b.ws(), "far", "converge.resume.v1"); p != "converge.resume.v1" {
		t.Errorf("subprotocol through the forward = %q, want converge.resume.v1", p)
	}
	<-done
	// Client on b, stream back through a.
	done = make(chan struct{})
	go func() { defer close(done); ag.echoStream(t, a.ws()) }()
	if p := echoThrough(t, b.ws(), "far"); p != "" {
		t.Errorf("subprotocol with none offered = %q, want none", p)
	}
	<-done
	fams := scrape(t, b.http())
	if got := value(t, fams, "converge_forwarded_streams_total", "kind", "client"); got != 2 {
		t.Errorf("b forwarded %v clients, want 2", got)
	}
	if got := value(t, fams, "converge_forwarded_streams_total", "kind", "stream"); got != 1 {
		t.Errorf("b forwarded %v streams, want 1", got)
	}

	// The holder's refusals pass through unchanged: a request that is no
	// WebSocket handshake gets the same answer from both replicas.
	codeA, _, bodyA := get(t, a.http()+"/client/far")
	codeB, _, bodyB := get(t, b.http()+"/client/far")
	if codeA == http.StatusSwitchingProtocols || codeB != codeA || bodyB != bodyA {
		t.Errorf("no handshake: holder %d %q, forwarded %d %q; want the holder's refusal passed through", codeA, bodyA, codeB, bodyB)
	}
	// Unknown IDs are 404 on every replica, with the owner's words.
	for _, r := range reps {
		if code, _, body := get(t, r.http()+"/client/nobody"); code != http.StatusNotFound || !strings.Contains(body, "nobody") {
			t.Errorf("unknown ID via %s: %d %q; want 404 naming it", r.addr, code, body)
		}
	}
	// The sessions view of b lists a's agent.
	if code, _, body := get(t, b.http()+"/sessions", "Authorization", "Basic OnB3"); code != http.StatusOK || !strings.Contains(body, "far-host") {
		t.Errorf("b's sessions view: %d, lists far-host: %v", code, strings.Contains(body, "far-host"))
	}
}

// TestClusterForwardsEarlyBytes: bytes a client sends with its raw
// stream request, before the 101, reach the agent held by another
// replica byte for byte, ahead of the rest of the stream.
func TestClusterForwardsEarlyBytes(t *testing.T) {
	reps, _ := runReplicas(t, 2)
	a, b := reps[0], reps[1]
	ag := dialAgentOffering(t, a.ws(), "far-early", wire.Info{}, "converge.resume.v1")
	done := make(chan struct{})
	go func() { defer close(done); ag.echoStream(t, a.ws()) }()
	early := make([]byte, 3000)
	for i := range early {
		early[i] = byte(i * 7)
	}
	cl := earlyClient(t, b.ws()+wire.ClientPath("far-early"), early)
	rest := bytes.Repeat([]byte("rest of the stream "), 10000)
	go cl.Write(rest)
	got := make([]byte, len(early)+len(rest))
	if _, err := io.ReadFull(cl, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(early)], early) || !bytes.Equal(got[len(early):], rest) {
		t.Error("the echo through the forwarding replica differs from what was sent")
	}
	<-done
	if got := value(t, scrape(t, b.http()), "converge_forwarded_streams_total", "kind", "client"); got != 1 {
		t.Errorf("b forwarded %v clients, want 1", got)
	}
}

// TestClusterRefusesForgedForward: a request claiming to be forwarded
// with a bad signature is refused; one signed right is served here and
// never forwarded again, and only once.
func TestClusterRefusesForgedForward(t *testing.T) {
	reps, _ := runReplicas(t, 2)
	dialAgentOffering(t, reps[0].ws(), "held", wire.Info{})
	if code, _, _ := get(t, reps[1].http()+"/client/held", forwardHeader, "v1 1 192.0.2.1 00"); code != http.StatusForbidden {
		t.Errorf("forged forward: %d, want 403", code)
	}
	ms := time.Now().UnixMilli()
	key, _ := registry.ParseKey(testClusterKey)
	signed := "v1 " + strconv.FormatInt(ms, 10) + " 192.0.2.1 " + forwardMAC(key, forwardClient, "held", "", ms, "192.0.2.1")
	if code, _, _ := get(t, reps[1].http()+"/client/held", forwardHeader, signed); code != http.StatusNotFound {
		t.Errorf("a forwarded request for an agent held elsewhere: %d, want 404 (one hop)", code)
	}
	// Issue 18, finding 10: a signature is accepted once.
	if code, _, _ := get(t, reps[1].http()+"/client/held", forwardHeader, signed); code != http.StatusForbidden {
		t.Errorf("the same signed forwarded request again: %d, want 403 (a replay)", code)
	}
}

// TestClusterDrain: on shutdown /healthz answers 503 for the drain
// delay, new agents are refused, then agents are released with 1001.
func TestClusterDrain(t *testing.T) {
	reps, _ := runReplicas(t, 1, func(c *Config) { c.DrainDelay = 300 * time.Millisecond })
	r := reps[0]
	ag := dialAgentOffering(t, r.ws(), "leaving", wire.Info{})
	start := time.Now()
	r.stop()
	r.closed = true
	waitUntil(t, "healthz to answer 503", func() bool {
		code, _, _ := get(t, r.http()+"/healthz")
		return code == http.StatusServiceUnavailable
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := wsconn.Dial(ctx, r.ws()+"/agent/newcomer", wsconn.Options{Subprotocols: []string{wire.ControlProtocol}})
	wantRefused(t, err, http.StatusServiceUnavailable, "shutting down")
	_, _, err = ag.ws.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("agent closed with %v, want 1001", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("agent released %v after shutdown began, before the drain delay", d)
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
}

func TestAdvertiseURL(t *testing.T) {
	for _, tc := range []struct{ in, want, port string }{
		{"http://10.0.0.5:8001", "ws://10.0.0.5:8001", ""},
		{"https://replica-1.internal/", "wss://replica-1.internal", ""},
		{"ws://10.0.0.5:8001/converge/", "ws://10.0.0.5:8001/converge", ""},
		{"http://127.0.0.1:0", "ws://127.0.0.1:0", ""},
		{"ftp://10.0.0.5", "", ""},
		{"10.0.0.5:8001", "", ""},
		{"http://user:pw@10.0.0.5", "", ""},
		{"http://10.0.0.5/?x=1", "", ""},
		{"http://", "", ""},
	} {
		got, err := advertiseURL(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("advertiseURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if got := withPort("ws://127.0.0.1:0", "41234"); got != "ws://127.0.0.1:41234" {
		t.Errorf("withPort = %q", got)
	}
	if got := withPort("ws://10.0.0.5:8001", "41234"); got != "ws://10.0.0.5:8001" {
		t.Errorf("withPort changed an explicit port: %q", got)
	}
}

// TestClusterConfig: --redis needs --advertise and the cluster key;
// --advertise alone is a mistake; the drain delay defaults per mode.
func TestClusterConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // in the error; "" for none
	}{
		{Config{Redis: "redis://127.0.0.1:1/0", ClusterKey: testClusterKey}, "--advertise"},
		{Config{Redis: "redis://127.0.0.1:1/0", Advertise: "http://127.0.0.1:1"}, "CONVERGE_CLUSTER_KEY"},
		{Config{Advertise: "http://127.0.0.1:1"}, "--redis"},
		{Config{Redis: "redis://127.0.0.1:1/0", Advertise: "tcp://x", ClusterKey: testClusterKey}, "--advertise"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v; want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	single := Config{}
	replica := Config{Redis: "redis://127.0.0.1:1/0", Advertise: "http://127.0.0.1:1", ClusterKey: testClusterKey}
	if err := errors.Join(single.Validate(), replica.Validate()); err != nil {
		t.Fatal(err)
	}
	if single.DrainDelay != 0 || replica.DrainDelay != DefaultClusterDrainDelay {
		t.Errorf("drain delay: single %v, replica %v; want 0 and %v", single.DrainDelay, replica.DrainDelay, DefaultClusterDrainDelay)
	}
}

// TestClusterSessionsViewLive: a watcher of one replica's sessions view
// sees agents come and go on another.
func TestClusterSessionsViewLive(t *testing.T) {
	reps, _ := runReplicas(t, 2)
	ev := openEvents(t, reps[1].http(), "pw")
	ag := dialAgentOffering(t, reps[0].ws(), "elsewhere", wire.Info{Hostname: "far-away-host"})
	ev.until(t, "far-away-host")
	ag.ws.Close(websocket.StatusNormalClosure, "bye")
	for strings.Contains(ev.next(t), "far-away-host") {
	}
}
