package registry

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/converge-ci/converge/internal/test/redistest"
)

// TestRedisRegistryFollowsSentinelFailover: real Sentinels promote the
// replica after a kill -9 of the master. A registration made meanwhile
// waits for the new master and succeeds; the script, which the replica
// never saw (scripts are not replicated), is loaded there on NOSCRIPT;
// the failover and the errors are counted; the lease refresh and the
// lookups work on the new master.
func TestRedisRegistryFollowsSentinelFailover(t *testing.T) {
	sn := redistest.StartSentinels(t)
	var w Watch
	rdb, err := OpenSentinel(context.Background(), Sentinel{Addrs: sn.Addrs(), Master: redistest.MasterName}, &w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	clk := &fakeClock{t: time.Unix(1000, 0)}
	rs := []*Redis[*testAgent]{
		newTestRedisRegistry(t, rdb, "ws://replica-0", Limits{Grace: time.Minute}, clk),
		newTestRedisRegistry(t, rdb, "ws://replica-1", Limits{Grace: time.Minute}, clk),
	}
	before, _ := join(t, testReg{rs[0]}, "before", unproven(), "192.0.2.1")
	old := sn.WaitMaster("")
	if got := w.Master(); got != old {
		t.Fatalf("the client dialled %q; the Sentinels name %q", got, old)
	}
	replica := sn.Nodes[1].Addr
	if cached := scriptCached(t, replica); cached {
		t.Fatal("the replica has the script cached: the NOSCRIPT path would go untested")
	}

	sn.Node(old).Kill()
	after := &testAgent{id: "after", remote: "192.0.2.2"}
	if _, err := (testReg{rs[1]}).Register("after", unproven(), after); err != nil {
		t.Fatalf("a registration during the failover: %v; want it to wait for the new master", err)
	}
	if m := sn.WaitMaster(old); w.Master() != m {
		t.Fatalf("after the failover the Sentinels name %q (was %q), the client dialled %q", m, old, w.Master())
	}
	if n := w.Failovers.Load(); n < 1 {
		t.Errorf("failovers counted: %d, want 1 (or more, should a starved master have failed over too)", n)
	}
	if n := w.Errors.Load(); n == 0 {
		t.Error("no Redis error counted while the master was dead")
	}
	if !scriptCached(t, w.Master()) {
		t.Error("the new master has no script cached after a registration ran it")
	}
	for _, r := range rs {
		if _, _, err := r.Refresh(); err != nil {
			t.Fatalf("refresh on the new master: %v", err)
		}
	}
	if a, owner := rs[1].route(context.Background(), "before"); a != nil || owner != rs[0].self {
		t.Errorf("replica 1 routes before to %p, %q; want replica 0", a, owner)
	}
	if a, _ := rs[0].route(context.Background(), "before"); a != before {
		t.Errorf("replica 0 routes before to %p, want its agent %p", a, before)
	}
	if _, owner := rs[0].route(context.Background(), "after"); owner != rs[1].self {
		t.Errorf("replica 0 routes after to %q, want replica 1", owner)
	}
}

func scriptCached(t *testing.T, addr string) bool {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	ok, err := c.ScriptExists(context.Background(), registryScript.Hash()).Result()
	if err != nil {
		t.Fatalf("SCRIPT EXISTS on %s: %v", addr, err)
	}
	return ok[0]
}

// TestRedisRegistryRetries: with Redis gone, a lookup of an ID held
// elsewhere retries until its context ends and then says the registry is
// unavailable (not "nobody"); one held here is served at once; a
// registration waits for Redis to come back.
func TestRedisRegistryRetries(t *testing.T) {
	rs := redistest.Start(t)
	clk := &fakeClock{t: time.Unix(1000, 0)}
	r := newTestRedisRegistry(t, rs.Client(), "ws://replica-0", Limits{Grace: time.Minute}, clk)
	mine, _ := join(t, testReg{r}, "mine", unproven(), "192.0.2.1")
	rs.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if a, here, owner, err := r.Route(ctx, "elsewhere"); !errors.Is(err, ErrUnavailable) || here || owner != "" || a != nil {
		t.Errorf("Route(elsewhere) with Redis gone: %p, %v, %q, %v; want ErrUnavailable", a, here, owner, err)
	}
	if a, here, _, err := r.Route(context.Background(), "mine"); a != mine || !here || err != nil {
		t.Errorf("Route(mine) with Redis gone: %p, %v, %v; want the local agent", a, here, err)
	}

	var wg sync.WaitGroup
	var regErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, regErr = (testReg{r}).Register("waits", unproven(), &testAgent{id: "waits", remote: "192.0.2.2"})
	}()
	rs.Restart()
	wg.Wait()
	if regErr != nil {
		t.Fatalf("a registration while Redis restarted: %v; want it to wait", regErr)
	}
}

// TestRedisRegisterRetryIsIdempotent: a registration sent again (its
// answer was lost) finds it holds the ID, even unproven.
func TestRedisRegisterRetryIsIdempotent(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	r := newTestRedisRegistry(t, miniRedis(t), "ws://replica-0", Limits{Grace: time.Minute}, clk)
	c := unproven()
	args := append([]any{"job", "conn-1", "192.0.2.1"}, claimArgs(c)...)
	for i := range 2 {
		v, err := r.run("register", args...)
		if err != nil {
			t.Fatal(err)
		}
		if res, _ := v.([]any); len(res) == 0 || res[0] != "ok" {
			t.Fatalf("register sent %d times answered %v, want ok", i+1, v)
		}
	}
	if st := statsOf(t, testReg{r}); st.entries != 1 || st.charged["192.0.2.1"] != 1 {
		t.Errorf("after a repeated registration: %+v; want one entry charged once", st)
	}
}

// TestRedisRegistryMissedWrites: a new master that missed the last
// registration (asynchronous replication) is Redis that lost data: the
// owner's next refresh claims the ID again, and other replicas route to
// it.
func TestRedisRegistryMissedWrites(t *testing.T) {
	rs, lost, _, rdb := replicas(t, 2, Limits{Grace: time.Minute})
	a, _ := join(t, testReg{rs[0]}, "latest", unproven(), "192.0.2.1")
	ctx := context.Background()
	if err := errors.Join(rdb.HDel(ctx, redisKeyIDs, "latest").Err(), rdb.ZRem(ctx, redisKeyLeases, "latest").Err(),
		rdb.HDel(ctx, redisKeyCharged, "192.0.2.1").Err()); err != nil {
		t.Fatal(err)
	}
	if _, owner := rs[1].route(ctx, "latest"); owner != "" {
		t.Fatalf("the entry is gone, yet replica 1 routes to %q", owner)
	}
	if _, changed, err := rs[0].Refresh(); err != nil || changed {
		t.Fatalf("refresh: changed %v, %v; want the same epoch, no error", changed, err)
	}
	if _, owner := rs[1].route(ctx, "latest"); owner != rs[0].self {
		t.Errorf("after the refresh replica 1 routes latest to %q, want %q", owner, rs[0].self)
	}
	if got, _ := rs[0].route(ctx, "latest"); got != a || len(lost[0]) != 0 {
		t.Errorf("replica 0 routes latest to %p (want %p) and lost %d agents", got, a, len(lost[0]))
	}
	if st := statsOf(t, testReg{rs[0]}); st.entries != 1 || st.charged["192.0.2.1"] != 1 {
		t.Errorf("after the repair: %+v; want one entry charged once", st)
	}
}

// TestSentinelValidate: what --redis-sentinel and --redis-master accept.
func TestSentinelValidate(t *testing.T) {
	for _, tc := range []struct {
		s    Sentinel
		want string // in the error; "": valid
	}{
		{Sentinel{Addrs: []string{"10.0.0.1:26379", "[::1]:26379"}, Master: "converge"}, ""},
		{Sentinel{Addrs: []string{"h:26379"}, Master: "rediss://:secret@converge/2"}, ""},
		{Sentinel{Master: "converge"}, "needs --redis-sentinel"},
		{Sentinel{Addrs: []string{"h:26379"}}, "needs --redis-master"},
		{Sentinel{Addrs: []string{"h"}, Master: "m"}, "want HOST:PORT"},
		{Sentinel{Addrs: []string{"h:1"}, Master: "redis://m:6379"}, "want NAME"},
		{Sentinel{Addrs: []string{"h:1"}, Master: "http://m"}, "want NAME"},
		{Sentinel{Addrs: []string{"h:1"}, Master: "redis://m/zero"}, "no number"},
	} {
		err := tc.s.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v; want %q", tc.s, err, tc.want)
		}
	}
	opt, err := Sentinel{Addrs: []string{"h:1"}, Master: "rediss://u:pw@converge/2"}.options()
	if err != nil || opt.MasterName != "converge" || opt.Username != "u" || opt.Password != "pw" || opt.DB != 2 || opt.TLSConfig == nil {
		t.Errorf("options of a master URL: %+v, %v; want name converge, user u, password pw, DB 2, TLS", opt, err)
	}
}
