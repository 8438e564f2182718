package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/converge-ci/converge/internal/test/redistest"
	"github.com/converge-ci/converge/internal/test/testlog"
)

// eachRegistry runs test against the in-memory registry and against the
// Redis one, on miniredis (which runs the Lua script) and on a real
// redis-server, each with limits and a fake clock at Unix 1000 s, when
// the registry was made.
func eachRegistry(t *testing.T, limits Limits, test func(t *testing.T, r testReg, clk *fakeClock)) {
	t.Run("memory", func(t *testing.T) {
		r, clk := newTestRegistry(limits)
		test(t, r, clk)
	})
	t.Run("redis", func(t *testing.T) {
		clk := &fakeClock{t: time.Unix(1000, 0)}
		r := newTestRedisRegistry(t, miniRedis(t), "ws://replica-1", limits, clk)
		test(t, testReg{r}, clk)
	})
	t.Run("redis-server", func(t *testing.T) {
		clk := &fakeClock{t: time.Unix(1000, 0)}
		r := newTestRedisRegistry(t, redistest.Start(t).Client(), "ws://replica-1", limits, clk)
		test(t, testReg{r}, clk)
	})
}

// miniRedis is a client of a fresh miniredis for the test.
func miniRedis(t testing.TB) *redis.Client {
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// newTestRedisRegistry is replica self's registry on rdb; the agents it
// closes for losing their IDs are recorded in the returned registry's lost
// hook by the caller when needed.
func newTestRedisRegistry(t testing.TB, rdb *redis.Client, self string, limits Limits, clk *fakeClock) *Redis[*testAgent] {
	return NewRedis[*testAgent](rdb, self, testKey, limits, clk.now, testlog.New(t).With("replica", self))
}

// registryStats are a registry's totals, whichever its kind.
type registryStats struct {
	entries, reserved int
	charged           map[string]int
}

func statsOf(t *testing.T, r testReg) registryStats {
	t.Helper()
	switch r := r.Registry.(type) {
	case *Memory[*testAgent]:
		r.mu.Lock()
		defer r.mu.Unlock()
		st := registryStats{entries: len(r.entries), reserved: r.reserved, charged: make(map[string]int)}
		for g, n := range r.charged {
			st.charged[g] = n
		}
		return st
	case *Redis[*testAgent]:
		ctx := context.Background()
		entries, err1 := r.rdb.HLen(ctx, redisKeyIDs).Result()
		reserved, err2 := r.rdb.ZCard(ctx, redisKeyRes).Result()
		charged, err3 := r.rdb.HGetAll(ctx, redisKeyCharged).Result()
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatal(err)
		}
		st := registryStats{entries: int(entries), reserved: int(reserved), charged: make(map[string]int)}
		for g, n := range charged {
			st.charged[g], _ = strconv.Atoi(n)
		}
		return st
	}
	t.Fatalf("unknown registry %T", r)
	return registryStats{}
}

// replicas are n registries of one cluster on one Redis, sharing clk;
// lost[i] receives the agents replica i closed for losing their IDs.
func replicas(t *testing.T, n int, limits Limits) (rs []*Redis[*testAgent], lost []chan *testAgent, clk *fakeClock, rdb *redis.Client) {
	clk = &fakeClock{t: time.Unix(1000, 0)}
	rdb = miniRedis(t)
	for i := range n {
		r := newTestRedisRegistry(t, rdb, fmt.Sprintf("ws://replica-%d", i), limits, clk)
		ch := make(chan *testAgent, 100)
		r.OnLost(func(a *testAgent) { ch <- a })
		rs, lost = append(rs, r), append(lost, ch)
	}
	return rs, lost, clk, rdb
}

// TestRedisRegistryRaceAcrossReplicas: agents racing for one ID on
// different replicas: exactly one wins.
func TestRedisRegistryRaceAcrossReplicas(t *testing.T) {
	rs, _, _, _ := replicas(t, 3, Limits{Grace: time.Minute})
	var wins sync.Map
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rs[i%len(rs)]
			if _, err := (testReg{r}).Register("race", unproven(), &testAgent{id: "race", remote: fmt.Sprint("192.0.2.", i)}); err == nil {
				wins.Store(i, r.self)
			} else if !errors.Is(err, ErrIDInUse) {
				t.Errorf("Claim %d: %v; want success or ErrIDInUse", i, err)
			}
		}()
	}
	wg.Wait()
	n := 0
	wins.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("%d agents registered the same ID across replicas, want exactly 1", n)
	}
}

// TestRedisRegistryHandover: an agent that reconnects to another replica
// with its token takes its ID there; the first replica learns it lost
// the ID (refresh) and closes its stale connection; lookups from every
// replica point at the new owner.
func TestRedisRegistryHandover(t *testing.T) {
	rs, lost, _, _ := replicas(t, 2, Limits{Grace: time.Minute})
	a, held := join(t, testReg{rs[0]}, "job", unproven(), "192.0.2.1")
	a.tenure = held
	for _, r := range rs {
		if _, owner := r.route(context.Background(), "job"); r == rs[1] && owner != rs[0].self {
			t.Fatalf("replica 1 routes job to %q, want %q", owner, rs[0].self)
		}
	}
	b := &testAgent{id: "job", remote: "192.0.2.1", tenure: held}
	if old, err := (testReg{rs[1]}).Register("job", proof(held), b); err != nil || old != nil {
		t.Fatalf("the agent back on replica 1 = %p, %v; want no local old agent, no error", old, err)
	}
	rs[1].Confirm("job", b)
	if _, _, err := rs[0].Refresh(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-lost[0]:
		if got != a {
			t.Fatalf("replica 0 closed %p, want its stale agent %p", got, a)
		}
	default:
		t.Fatal("replica 0's refresh did not find that its agent lost the ID")
	}
	if local, owner := rs[0].route(context.Background(), "job"); local != nil || owner != rs[1].self {
		t.Fatalf("replica 0 routes job to %p, %q; want replica 1", local, owner)
	}
	if local, _ := rs[1].route(context.Background(), "job"); local != b {
		t.Fatalf("replica 1 routes job to %p, want its agent %p", local, b)
	}
	// The stale connection's handler ends: it must not free b's ID.
	rs[0].Unregister("job", a)
	if local, _ := rs[1].route(context.Background(), "job"); local != b {
		t.Fatal("the stale holder's Unregister removed the new holder")
	}
}

// TestRedisRegistryDeadReplica: a replica that stops refreshing loses
// its agents when their leases end: confirmed ones leave reservations
// that only their tenures may take, unconfirmed ones leave nothing.
func TestRedisRegistryDeadReplica(t *testing.T) {
	rs, _, clk, _ := replicas(t, 2, Limits{Grace: time.Minute})
	_, held := join(t, testReg{rs[0]}, "welcomed", unproven(), "192.0.2.1")
	if _, err := (testReg{rs[0]}).Register("hello-only", unproven(), &testAgent{id: "hello-only", remote: "192.0.2.1"}); err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(leaseTime)
	if _, owner := rs[1].route(context.Background(), "welcomed"); owner != "" {
		t.Fatalf("a dead replica's lease ran out, yet welcomed is routed to %q", owner)
	}
	if !free(t, testReg{rs[1]}, "hello-only") {
		t.Error("an unconfirmed agent of a dead replica still holds its ID after its lease")
	}
	if free(t, testReg{rs[1]}, "welcomed") {
		t.Error("a welcomed agent of a dead replica left no reservation")
	}
	join(t, testReg{rs[1]}, "welcomed", proof(held), "192.0.2.1")
}

// TestRedisRegistryRefill: Redis restarts empty. Until the owners'
// next refresh, a rogue may take an ID; the refresh claims the IDs back
// with the agents' tokens (signed before the new epoch), the rogue's
// replica learns it lost, and every ID has one owner.
func TestRedisRegistryRefill(t *testing.T) {
	rs, lost, clk, rdb := replicas(t, 2, Limits{Grace: time.Minute})
	var agents []*testAgent
	for i := range 5 {
		id := fmt.Sprint("job-", i)
		a, held := join(t, testReg{rs[0]}, id, freshAt(clk), "192.0.2.1")
		a.tenure = held
		a.issued.Store(clk.t.UnixNano())
		agents = append(agents, a)
	}
	if _, _, err := rs[0].Refresh(); err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(10 * time.Second)
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	rogue, _ := join(t, testReg{rs[1]}, "job-0", freshAt(clk), "198.51.100.66")
	rogue.issued.Store(clk.t.UnixNano())
	if _, changed, err := rs[0].Refresh(); err != nil || !changed {
		t.Fatalf("refresh after Redis lost its data: changed %v, %v; want the epoch changed", changed, err)
	}
	if _, _, err := rs[1].Refresh(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-lost[1]:
		if got != rogue {
			t.Fatalf("replica 1 closed %p, want the rogue %p", got, rogue)
		}
	default:
		t.Fatal("the rogue kept the ID it took while Redis was empty")
	}
	if len(lost[0]) != 0 {
		t.Fatalf("replica 0 lost %d agents in the refill", len(lost[0]))
	}
	for i, a := range agents {
		for _, r := range rs {
			local, owner := r.route(context.Background(), a.id)
			if (r == rs[0] && local != a) || (r == rs[1] && owner != rs[0].self) {
				t.Errorf("agent %d: replica %s routes to %p, %q; want replica 0's agent", i, r.self, local, owner)
			}
		}
	}
	if st := statsOf(t, testReg{rs[0]}); st.entries != 5 || st.charged["192.0.2.1"] != 5 || len(st.charged) != 1 {
		t.Errorf("after the refill: %+v; want 5 entries charged to 192.0.2.1", st)
	}
}

// freshAt is the Claim of an agent with no token at clk's time: a
// tenure begun now, as the server makes them.
func freshAt(clk *fakeClock) Claim { return Claim{Tenure: NewTenure(clk.t)} }

// route is Route as the tests read it: the agent held here, or the
// replica holding it.
func (r *Redis[V]) route(ctx context.Context, id string) (V, string) {
	a, _, owner, _ := r.Route(ctx, id)
	return a, owner
}

// testKey is the cluster key of the tests' replicas.
var testKey = []byte("0123456789abcdef0123456789abcdef")

// TestRedisRegistryUnsignedEntries: whoever writes to Redis without the
// cluster key cannot send a replica anywhere (issue 18, finding 3): an
// entry naming another owner, or one made up, is routed to nowhere, and
// a forged "lost" event closes nobody.
func TestRedisRegistryUnsignedEntries(t *testing.T) {
	rs, lost, _, rdb := replicas(t, 2, Limits{Grace: time.Minute})
	ctx := context.Background()
	a, _ := join(t, testReg{rs[0]}, "job", unproven(), "192.0.2.1")
	if _, owner := rs[1].route(ctx, "job"); owner != rs[0].self {
		t.Fatalf("replica 1 routes job to %q, want %q", owner, rs[0].self)
	}
	raw, err := rdb.HGet(ctx, redisKeyIDs, "job").Result()
	if err != nil {
		t.Fatal(err)
	}
	var e map[string]any
	json.Unmarshal([]byte(raw), &e)
	conn := e["c"].(string)
	e["o"] = "ws://192.0.2.66:80"
	b, _ := json.Marshal(e)
	forged := `{"o":"ws://192.0.2.66:80","c":"` + strings.Repeat("0", 56) + `","l":1e15,"ts":1,"tn":0,"p":1,"cf":1,"g":"x"}`
	rdb.HSet(ctx, redisKeyIDs, "job", string(b), "made-up", forged)
	for _, id := range []string{"job", "made-up"} {
		if _, owner := rs[1].route(ctx, id); owner != "" {
			t.Errorf("replica 1 routes %s to %q from an entry not signed with the cluster key; want nowhere", id, owner)
		}
	}
	rdb.HSet(ctx, redisKeyIDs, "job", raw)
	rs[0].Event("lost\t" + rs[0].self + "\t" + conn + "\tjob")
	if len(lost[0]) != 0 {
		t.Fatal("a forged lost event closed an agent whose signed entry names it still")
	}
	if local, _ := rs[0].route(ctx, "job"); local != a {
		t.Fatalf("after a forged event replica 0 routes job to %p, want its agent %p", local, a)
	}
}

// TestRedisRegistryRedisClock: replicas send no time; leases run on
// Redis's clock (issue 18, finding 2), so replicas whose clocks differ
// agree on them.
func TestRedisRegistryRedisClock(t *testing.T) {
	rdb := redistest.Start(t).Client()
	r := NewRedis[*testAgent](rdb, "ws://replica-1", testKey, Limits{Grace: time.Minute}, nil, testlog.New(t))
	join(t, testReg{r}, "job", Claim{Tenure: NewTenure(time.Now())}, "192.0.2.1")
	ctx := context.Background()
	lease, err1 := rdb.ZScore(ctx, redisKeyLeases, "job").Result()
	now, err2 := rdb.Time(ctx).Result()
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if d := time.UnixMilli(int64(lease)).Sub(now); d > leaseTime || d < leaseTime-Timeout {
		t.Fatalf("lease ends %v after Redis's now, want about %v", d, leaseTime)
	}
	if local, _ := r.route(ctx, "job"); local == nil {
		t.Fatal("the replica does not route to its own agent on Redis's clock")
	}
}

// TestRedisRegistryReleaseAcrossReplicas: an agent that says goodbye on
// one replica frees its ID for every replica at once.
func TestRedisRegistryReleaseAcrossReplicas(t *testing.T) {
	rs, _, _, _ := replicas(t, 2, Limits{Grace: time.Minute})
	a, _ := join(t, testReg{rs[0]}, "job", unproven(), "192.0.2.1")
	rs[0].Release("job", a)
	if _, err := (testReg{rs[1]}).Register("job", unproven(), &testAgent{id: "job", remote: "192.0.2.2"}); err != nil {
		t.Fatalf("Register on the other replica after the goodbye: %v", err)
	}
}
