package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// TestAgentLimitGroupsIPv6By64: one host holds a whole /64, so the
// per-address limit counts the /64, not each address in it (issue 10,
// finding 8).
func TestAgentLimitGroupsIPv6By64(t *testing.T) {
	r := runServer(t, func(c *Config) {
		c.MaxAgentsPerAddr = 1
		c.TrustedProxies = []string{"127.0.0.1"} // so the test can say where it comes from
	})
	from := func(addr string) http.Header { return http.Header{"X-Forwarded-For": {addr}} }
	registerAgent(t, r.ws(), "first", from("2001:db8:1:2::a"))
	_, err := dialControl(t, r.ws(), "second", from("2001:db8:1:2:ffff::b"))
	wantRefused(t, err, http.StatusTooManyRequests, "2001:db8:1:2::/64")
	registerAgent(t, r.ws(), "next-64", from("2001:db8:1:3::a"))
	registerAgent(t, r.ws(), "v4", from("192.0.2.1"))
	_, err = dialControl(t, r.ws(), "v4-mapped", from("::ffff:192.0.2.1"))
	wantRefused(t, err, http.StatusTooManyRequests, "192.0.2.1")
}

func TestAddrLimiter(t *testing.T) {
	l := newAddrLimiter("client streams", 2, 3)
	for _, addr := range []string{"2001:db8::1", "2001:db8::2"} {
		if err := l.acquire(addr); err != nil {
			t.Fatalf("acquire(%s): %v", addr, err)
		}
	}
	err := l.acquire("2001:db8::3")
	if err == nil || err.Group != "2001:db8::/64" {
		t.Fatalf("third from one /64 over a limit of 2: %+v; want refused for the /64", err)
	}
	if err := l.acquire("192.0.2.1"); err != nil {
		t.Fatalf("acquire(192.0.2.1): %v", err)
	}
	err = l.acquire("192.0.2.2")
	if err == nil || err.Group != "" {
		t.Fatalf("fourth in all over a cap of 3: %+v; want refused as full", err)
	}
	l.release("2001:db8::1") // another address of the same /64 frees the slot
	if err := l.acquire("192.0.2.2"); err != nil {
		t.Fatalf("after a release, acquire: %v", err)
	}
	for _, addr := range []string{"2001:db8::2", "192.0.2.1", "192.0.2.2"} {
		l.release(addr)
	}
	if len(l.n) != 0 || l.sum != 0 {
		t.Errorf("after every release: %v, sum %d; want nothing held", l.n, l.sum)
	}
}

// TestServerCaps: beyond --max-agents and --max-streams the server
// refuses with 503 and counts the refusal as server_full.
func TestServerCaps(t *testing.T) {
	r := runServer(t, func(c *Config) { c.MaxAgents = 1; c.MaxStreams = 1 })
	a := dialAgent(t, r.ws(), "only", wire.Info{})
	_, err := dialControl(t, r.ws(), "another", nil)
	wantRefused(t, err, http.StatusServiceUnavailable, "as many agents as it allows (1)")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, r.ws()+"/client/only", wsconn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	a.echoStream(t, r.ws())
	_, err = wsconn.Dial(ctx, r.ws()+"/client/only", wsconn.Options{})
	wantRefused(t, err, http.StatusServiceUnavailable, "as many client streams as it allows (1)")

	m := scrape(t, r.http())
	for _, endpoint := range []string{endpointAgent, endpointClient} {
		if got := value(t, m, "converge_refusals_total", "endpoint", endpoint, "reason", reasonServerFull); got != 1 {
			t.Errorf("refusals{endpoint=%s,reason=server_full} = %v, want 1", endpoint, got)
		}
	}
}

// TestMaxFiles: the descriptors the caps allow are one per agent and one
// per idle stream of its pool, and per stream two and the kernel splice's
// pipes, plus headroom; with a cap off nothing is bounded.
func TestMaxFiles(t *testing.T) {
	for _, tc := range []struct {
		agents, streams, pool int
		want                  int
	}{
		{0, 0, 0, DefaultMaxAgents*(1+DefaultStreamPool) + (2+splice.ExtraFiles)*DefaultMaxStreams + fileHeadroom},
		{10000, 1000, -1, 10000 + (2+splice.ExtraFiles)*1000 + fileHeadroom},
		{10000, 1000, 2, 30000 + (2+splice.ExtraFiles)*1000 + fileHeadroom},
		{-1, 1000, 0, 0},
		{10000, -1, 0, 0},
	} {
		s, err := New(Config{MaxAgents: tc.agents, MaxStreams: tc.streams, StreamPool: tc.pool})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.MaxFiles(); got != tc.want {
			t.Errorf("MaxFiles() with --max-agents %d --max-streams %d --stream-pool %d = %d, want %d", tc.agents, tc.streams, tc.pool, got, tc.want)
		}
	}
}

// TestGate: a gate lets its size in, parks the next until a place is
// given back, in the order they came, and lets a waiter give up.
func TestGate(t *testing.T) {
	g := newGate(1)
	if !g.enter(context.Background()) {
		t.Fatal("an empty gate refused")
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if g.enter(gone) {
		t.Fatal("a full gate let in one that gave up")
	}
	in := make(chan bool)
	go func() { in <- g.enter(context.Background()) }()
	g.leave()
	if !<-in {
		t.Fatal("a waiter did not get the place given back")
	}
	g.leave()
	if newGate(-1).enter(gone) != true {
		t.Error("an unlimited gate refused")
	}
}

// TestRegistrationsInProgressBounded: agents registering one at a time
// (MaxRegistering 1) all get in, and a refused one (409) gives its place
// back: with a wait of 50 ms, a place kept would refuse the next with 503.
func TestRegistrationsInProgressBounded(t *testing.T) {
	r := runServer(t, func(c *Config) { c.MaxRegistering, c.registeringWait = 1, 50*time.Millisecond })
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialAgentOffering(t, r.ws(), fmt.Sprintf("herd-%d", i), wire.Info{})
		}()
	}
	wg.Wait()
	for range 3 {
		_, err := wsconn.Dial(context.Background(), r.ws()+wire.AgentPath("herd-0"), wsconn.Options{Subprotocols: []string{wire.ControlProtocol}})
		var re *wsconn.RefusedError
		if !errors.As(err, &re) || re.Status != http.StatusConflict {
			t.Fatalf("a second agent for a held ID: %v, want 409", err)
		}
	}
	offering(t, r.ws(), "after") // fails the test on a 503
}
