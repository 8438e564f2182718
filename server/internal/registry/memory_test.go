package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// testAgent is what the tests store for an agent.
type testAgent struct {
	id, remote string
	tenure     Tenure
	issued     atomic.Int64 // unix nanoseconds its latest token was signed; 0: none yet
}

func (a *testAgent) Issued() time.Time {
	if n := a.issued.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// testReg is a registry as the tests use it: a claim's address group is
// its agent's, Register returns the holder it displaced or nil, Lookup
// the agent held here or nil.
type testReg struct{ Registry[*testAgent] }

func (r testReg) Register(id string, c Claim, a *testAgent) (*testAgent, error) {
	c.Group = AddrGroup(a.remote)
	old, _, err := r.Registry.Register(id, c, a)
	return old, err
}

func (r testReg) Lookup(id string) *testAgent {
	a, _, _, _ := r.Registry.Route(context.Background(), id)
	return a
}

func newTestRegistry(limits Limits) (testReg, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	return testReg{NewMemory[*testAgent](limits, clk.now)}, clk
}

// tenures hands out distinct tenures, each younger than the last, all
// begun since test registries were made (at 1000).
var tenures atomic.Uint32

// unproven is the Claim of an agent with no token: a fresh tenure.
func unproven() Claim { return Claim{Tenure: Tenure{since: 1000 + tenures.Add(1)}} }

// proof is the Claim of an agent presenting a valid token for t, signed
// since the registry was made.
func proof(t Tenure) Claim { return Claim{Tenure: t, Proven: true, Issued: max(t.since, 1001)} }

// oldProof is the Claim of an agent presenting a valid token for t signed
// before the registry was made (before a restart): the registry may have
// forgotten t.
func oldProof(t Tenure) Claim { return Claim{Tenure: t, Proven: true, Issued: 1000} }

// join registers and confirms a new agent from remote as id, as a whole
// hello/welcome does, and returns it with its tenure.
func join(t *testing.T, r testReg, id string, c Claim, remote string) (*testAgent, Tenure) {
	t.Helper()
	a := &testAgent{id: id, remote: remote, tenure: c.Tenure}
	if _, err := r.Register(id, c, a); err != nil {
		t.Fatalf("Register(%q) from %s: %v", id, remote, err)
	}
	r.Confirm(id, a)
	return a, c.Tenure
}

// free reports whether a stranger may take id now; if so, it leaves it
// free again.
func free(t *testing.T, r testReg, id string) bool {
	t.Helper()
	a := &testAgent{id: id, remote: "stranger"}
	_, err := r.Register(id, unproven(), a)
	if err == nil {
		r.Unregister(id, a)
		return true
	}
	if !errors.Is(err, ErrIDReserved) && !errors.Is(err, ErrIDInUse) {
		t.Fatalf("Register(%q) from a stranger: %v", id, err)
	}
	return false
}

func TestRegistry(t *testing.T) {
	eachRegistry(t, Limits{Grace: 5 * time.Minute}, testRegistry)
}

func testRegistry(t *testing.T, r testReg, clk *fakeClock) {
	a1, a2, a3 := &testAgent{id: "job"}, &testAgent{id: "job"}, &testAgent{id: "job"}

	first := unproven()
	if old, err := r.Register("job", first, a1); err != nil || old != nil {
		t.Fatalf("first Register = %v, %v; want no old agent, no error", old, err)
	}
	r.Confirm("job", a1)
	if got := r.Lookup("job"); got != a1 {
		t.Fatalf("Lookup = %p, want a1 %p", got, a1)
	}
	// A second agent without proof is refused while a1 is connected.
	if _, err := r.Register("job", unproven(), a2); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("duplicate Register err = %v, want ErrIDInUse", err)
	}
	// So is one proving a younger tenure.
	if _, err := r.Register("job", proof(unproven().Tenure), a2); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("Register proving a younger Tenure err = %v, want ErrIDInUse", err)
	}
	// The same agent reconnecting before its old link was noticed dead
	// replaces it and gets the old connection back to close.
	if old, err := r.Register("job", proof(first.Tenure), a2); err != nil || old != a1 {
		t.Fatalf("re-Register = %p, %v; want old a1", old, err)
	}
	r.Confirm("job", a2)
	// The stale connection unregistering must not remove the new one.
	r.Unregister("job", a1)
	if got := r.Lookup("job"); got != a2 {
		t.Fatalf("after stale Unregister, Lookup = %p, want a2", got)
	}
	// After a drop the ID is reserved for the grace period.
	r.Unregister("job", a2)
	if got := r.Lookup("job"); got != nil {
		t.Fatalf("Lookup after Unregister = %p, want nil", got)
	}
	clk.t = clk.t.Add(4 * time.Minute)
	if _, err := r.Register("job", unproven(), a3); !errors.Is(err, ErrIDReserved) {
		t.Fatalf("Register during grace err = %v, want ErrIDReserved", err)
	}
	if _, err := r.Register("job", proof(first.Tenure), a3); err != nil {
		t.Fatalf("owner Register during grace: %v", err)
	}
	r.Confirm("job", a3)
	r.Unregister("job", a3)
	// After the grace period anyone may take it.
	clk.t = clk.t.Add(6 * time.Minute)
	if _, err := r.Register("job", unproven(), a1); err != nil {
		t.Fatalf("Register after grace: %v", err)
	}
}

// TestRegistryProvenBeatsUnprovenHolder is the restart race (issue 11): a
// restarted server's registry is empty, a rogue asking first gets the
// ID, and the agent proving its Tenure takes it back; from then on the ID
// is the agent's, connected or reserved, whatever the rogue shows.
func TestRegistryProvenBeatsUnprovenHolder(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute}, testRegistryProvenBeatsUnprovenHolder)
}

func testRegistryProvenBeatsUnprovenHolder(t *testing.T, r testReg, _ *fakeClock) {
	own := Tenure{since: 900} // the agent's, from before the restart
	rogue, rogueTenure := join(t, r, "victim", unproven(), "198.51.100.66")

	agent := &testAgent{id: "victim", remote: "192.0.2.1", tenure: own}
	if old, err := r.Register("victim", oldProof(own), agent); err != nil || old != rogue {
		t.Fatalf("proven agent against the rogue = %p, %v; want the rogue back to close", old, err)
	}
	r.Confirm("victim", agent)
	r.Unregister("victim", rogue) // its handler ends
	for _, c := range []Claim{unproven(), proof(rogueTenure)} {
		if _, err := r.Register("victim", c, &testAgent{id: "victim", remote: "198.51.100.66"}); !errors.Is(err, ErrIDInUse) {
			t.Fatalf("rogue back with %+v while the agent is connected: %v; want ErrIDInUse", c, err)
		}
	}
	r.Unregister("victim", agent) // its link drops
	for _, c := range []Claim{unproven(), proof(rogueTenure)} {
		if _, err := r.Register("victim", c, &testAgent{id: "victim", remote: "198.51.100.66"}); !errors.Is(err, ErrIDReserved) {
			t.Fatalf("rogue back with %+v while the ID is reserved for the agent: %v; want ErrIDReserved", c, err)
		}
	}
	join(t, r, "victim", proof(own), "192.0.2.1")
}

// TestRegistryEndedTenureIsNoKey: a Tenure that lost the ID here (its
// reservation expired, another took the ID) proves nothing against the
// next holder, though its token is still valid.
func TestRegistryEndedTenureIsNoKey(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute}, testRegistryEndedTenureIsNoKey)
}

func testRegistryEndedTenureIsNoKey(t *testing.T, r testReg, clk *fakeClock) {
	a, first := join(t, r, "job", unproven(), "192.0.2.1")
	r.Unregister("job", a)
	clk.t = clk.t.Add(time.Minute)
	join(t, r, "job", unproven(), "192.0.2.2")
	if _, err := r.Register("job", proof(first), &testAgent{id: "job", remote: "192.0.2.1"}); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("the first Tenure back after its reservation expired: %v; want ErrIDInUse", err)
	}
}

// TestRegistryOlderTenureWins: a proven Claim the registry may have
// forgotten takes the ID from a younger Tenure, connected or reserved (it
// began while the older one was forgotten), and from a connected holder
// that proved nothing; a younger or same-second Tenure is refused, and so
// is a Claim the registry remembers.
func TestRegistryOlderTenureWins(t *testing.T) {
	older, younger := Tenure{since: 500, nonce: 1}, Tenure{since: 600, nonce: 1}
	sameSecond := Tenure{since: 600, nonce: 2}
	// ended's latest token was signed at 800: its link ended by 860, its
	// reservation (grace 1 min) by 920, before afterEnded began.
	ended, afterEnded := Tenure{since: 700, nonce: 1}, Tenure{since: 950, nonce: 1}
	endedProof := Claim{Tenure: ended, Proven: true, Issued: 800}
	for _, tc := range []struct {
		name      string
		holder    Claim
		connected bool
		claim     Claim
		want      error
	}{
		{"older over younger, connected", oldProof(younger), true, oldProof(older), nil},
		{"older over younger, reserved", oldProof(younger), false, oldProof(older), nil},
		{"older over a fresh Tenure, reserved", unproven(), false, oldProof(older), nil},
		{"younger over older, connected", oldProof(older), true, oldProof(younger), ErrIDInUse},
		{"younger over older, reserved", oldProof(older), false, oldProof(younger), ErrIDReserved},
		{"same second, another nonce", oldProof(younger), true, oldProof(sameSecond), ErrIDInUse},
		{"younger over an unproven holder", Claim{Tenure: older}, true, oldProof(younger), nil},
		{"remembered over an unproven holder", unproven(), true, proof(older), ErrIDInUse},
		{"remembered older over younger, reserved", oldProof(younger), false, proof(older), ErrIDReserved},
		{"unproven over an unproven holder", unproven(), true, unproven(), ErrIDInUse},
		// Issue 18, finding 4: a tenure that had ended, its reservation
		// included, before the younger began is no key to the ID.
		{"ended older over younger, connected", oldProof(afterEnded), true, endedProof, ErrIDInUse},
		{"ended older over younger, reserved", oldProof(afterEnded), false, endedProof, ErrIDReserved},
		{"younger over an ended older, connected", endedProof, true, oldProof(afterEnded), nil},
		{"younger over an ended older, reserved", endedProof, false, oldProof(afterEnded), nil},
		{"older whose reservation was live over younger", oldProof(afterEnded), true, Claim{Tenure: ended, Proven: true, Issued: 830}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachRegistry(t, Limits{Grace: time.Minute}, func(t *testing.T, r testReg, _ *fakeClock) {
				h, _ := join(t, r, "job", tc.holder, "192.0.2.1")
				if !tc.connected {
					r.Unregister("job", h)
				}
				_, err := r.Register("job", tc.claim, &testAgent{id: "job", remote: "192.0.2.2", tenure: tc.claim.Tenure})
				if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
					t.Fatalf("holder %+v (connected %v), Claim %+v: got %v, want %v", tc.holder, tc.connected, tc.claim, err, tc.want)
				}
			})
		})
	}
}

// TestRegistryUnconfirmedLeavesNothing: a Claim whose agent never
// completed its hello leaves no reservation (issue 10, finding 1).
func TestRegistryUnconfirmedLeavesNothing(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute, PerAddr: 2}, testRegistryUnconfirmedLeavesNothing)
}

func testRegistryUnconfirmedLeavesNothing(t *testing.T, r testReg, _ *fakeClock) {
	for i := range 10 {
		id := fmt.Sprint("squat-", i)
		a := &testAgent{id: id, remote: "198.51.100.7"}
		if _, err := r.Register(id, unproven(), a); err != nil {
			t.Fatalf("Claim %d: %v", i, err)
		}
		r.Unregister(id, a)
		if !free(t, r, id) {
			t.Fatalf("%s is still held after a Claim that never said hello", id)
		}
	}
	if st := statsOf(t, r); st.entries != 0 || len(st.charged) != 0 || st.reserved != 0 {
		t.Errorf("after unconfirmed claims: %d entries, %d addresses charged, %d reserved; want none", st.entries, len(st.charged), st.reserved)
	}
}

// TestRegistryProvenClaimKeepsReservation: an agent that proves its
// Tenure and drops before its welcome leaves its reservation as it was,
// expiring when it would have.
func TestRegistryProvenClaimKeepsReservation(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute}, testRegistryProvenClaimKeepsReservation)
}

func testRegistryProvenClaimKeepsReservation(t *testing.T, r testReg, clk *fakeClock) {
	a, held := join(t, r, "job", unproven(), "192.0.2.1")
	r.Unregister("job", a) // reserved until +1m
	clk.t = clk.t.Add(40 * time.Second)
	b := &testAgent{id: "job", remote: "192.0.2.2"}
	if _, err := r.Register("job", proof(held), b); err != nil {
		t.Fatalf("proven claim: %v", err)
	}
	r.Unregister("job", b) // before its welcome
	if free(t, r, "job") {
		t.Fatal("the reservation was lost when its agent dropped before the welcome")
	}
	clk.t = clk.t.Add(20 * time.Second)
	if !free(t, r, "job") {
		t.Fatal("the restored reservation outlived its grace; it must keep its first expiry")
	}
}

// TestRegistryDisplacedAgentKeepsReservation: a confirmed agent replaced
// by a proven Claim keeps its ID reserved if the Claim drops before its
// welcome.
func TestRegistryDisplacedAgentKeepsReservation(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute}, testRegistryDisplacedAgentKeepsReservation)
}

func testRegistryDisplacedAgentKeepsReservation(t *testing.T, r testReg, _ *fakeClock) {
	a, held := join(t, r, "job", unproven(), "192.0.2.1")
	b := &testAgent{id: "job", remote: "192.0.2.1"}
	if old, err := r.Register("job", proof(held), b); err != nil || old != a {
		t.Fatalf("proven Claim = %p, %v; want old a", old, err)
	}
	r.Unregister("job", a) // the old handler ends: nothing of it is left
	r.Unregister("job", b)
	if free(t, r, "job") {
		t.Fatal("the displaced agent's ID was freed by a Claim that dropped before its welcome")
	}
	c := &testAgent{id: "job", remote: "192.0.2.1"}
	if _, err := r.Register("job", proof(held), c); err != nil {
		t.Fatalf("owner back: %v", err)
	}
}

// TestRegistryChargesReservationsToTheirAddress: per-address limits count
// connected agents and the reservations they left, at the address that
// held the agent; taking a reservation back moves its charge.
func TestRegistryChargesReservationsToTheirAddress(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute, PerAddr: 2}, testRegistryChargesReservationsToTheirAddress)
}

func testRegistryChargesReservationsToTheirAddress(t *testing.T, r testReg, clk *fakeClock) {
	const home, away = "192.0.2.1", "198.51.100.1"
	a, tenureA := join(t, r, "a", unproven(), home)
	b, tenureB := join(t, r, "b", unproven(), home)
	r.Unregister("a", a)
	r.Unregister("b", b)
	var limit *LimitError
	if _, err := r.Register("c", unproven(), &testAgent{id: "c", remote: home}); !errors.As(err, &limit) || limit.Group != home || limit.Limit != 2 {
		t.Fatalf("third from %s with two reservations: %v; want a limitError for it", home, err)
	}
	// Coming back from the same address moves the charge: allowed at the limit.
	a2, _ := join(t, r, "a", proof(tenureA), home)
	// From another address at its own limit: refused, the reservation stays.
	join(t, r, "x", unproven(), away)
	join(t, r, "y", unproven(), away)
	if _, err := r.Register("b", proof(tenureB), &testAgent{id: "b", remote: away}); !errors.As(err, &limit) || limit.Group != away {
		t.Fatalf("b back from full %s: %v; want a limitError", away, err)
	}
	if free(t, r, "b") {
		t.Fatal("a refused Claim freed the reservation")
	}
	r.Unregister("a", a2)
	clk.t = clk.t.Add(time.Minute)
	if _, err := r.Register("c", unproven(), &testAgent{id: "c", remote: home}); err != nil {
		t.Fatalf("after the reservations expired, Register from %s: %v", home, err)
	}
	if got := statsOf(t, r).charged[home]; got != 1 {
		t.Errorf("%s is charged %d, want 1", home, got)
	}
}

// TestRegistryCapsReservations: when maxReserved are held, a new
// reservation drops the oldest.
func TestRegistryCapsReservations(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute, MaxReserved: 3}, testRegistryCapsReservations)
}

func testRegistryCapsReservations(t *testing.T, r testReg, clk *fakeClock) {
	for i := range 4 {
		id := fmt.Sprint("job-", i)
		a, _ := join(t, r, id, unproven(), fmt.Sprint("192.0.2.", i))
		r.Unregister(id, a)
		clk.t = clk.t.Add(time.Second)
	}
	for i, want := range []bool{true, false, false, false} {
		if got := free(t, r, fmt.Sprint("job-", i)); got != want {
			t.Errorf("job-%d free = %v, want %v (the oldest of 4 reservations over a cap of 3 is dropped)", i, got, want)
		}
	}
	if st := statsOf(t, r); st.reserved != 3 || len(st.charged) != 3 {
		t.Errorf("%d reserved, %d addresses charged; want 3 and 3", st.reserved, len(st.charged))
	}
}

// TestRegistryExpiresWithoutScanning: expired reservations are forgotten
// from the front of the queue, and reservations taken back early do not
// pile up in it.
func TestRegistryExpiresWithoutScanning(t *testing.T) {
	tr, clk := newTestRegistry(Limits{Grace: time.Minute})
	r := tr.Registry.(*Memory[*testAgent])
	for i := range 100 {
		id := fmt.Sprint("job-", i)
		a, _ := join(t, tr, id, unproven(), "192.0.2.1")
		r.Unregister(id, a)
	}
	clk.t = clk.t.Add(2 * time.Minute)
	join(t, tr, "fresh", unproven(), "192.0.2.1")
	if len(r.entries) != 1 || len(r.queue) != 0 || r.reserved != 0 {
		t.Fatalf("after reservations expired: %d entries, %d queued, %d reserved; want 1, 0, 0", len(r.entries), len(r.queue), r.reserved)
	}
	// One agent dropping and coming back 10,000 times within the grace.
	a, held := join(t, tr, "flappy", unproven(), "192.0.2.1")
	for range 10000 {
		r.Unregister("flappy", a)
		a, _ = join(t, tr, "flappy", proof(held), "192.0.2.1")
	}
	if len(r.queue) > 100 {
		t.Errorf("queue holds %d reservations for one live one; ended ones must not pile up", len(r.queue))
	}
}

func TestRegistryNoGrace(t *testing.T) {
	eachRegistry(t, Limits{Grace: -1}, testRegistryNoGrace)
}

func testRegistryNoGrace(t *testing.T, r testReg, _ *fakeClock) {
	a, _ := join(t, r, "job", unproven(), "192.0.2.1")
	r.Unregister("job", a)
	if _, err := r.Register("job", unproven(), &testAgent{id: "job"}); err != nil {
		t.Fatalf("with grace off, Register after Unregister: %v", err)
	}
}

func TestRegistryConcurrentClaims(t *testing.T) {
	eachRegistry(t, Limits{Grace: time.Minute}, testRegistryConcurrentClaims)
}

func testRegistryConcurrentClaims(t *testing.T, r testReg, _ *fakeClock) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.Register("race", unproven(), &testAgent{id: "race"}); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d agents registered the same ID, want exactly 1", wins)
	}
	if got := len(r.Agents()); got != 1 {
		t.Fatalf("Agents() has %d entries, want 1", got)
	}
}

func TestAddrGroup(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.1", "192.0.2.1"},
		{"192.0.2.2", "192.0.2.2"}, // IPv4: each address its own
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"2001:DB8:1:2::1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1", "::/64"},
		{"not-an-ip", "not-an-ip"},
	} {
		if got := AddrGroup(tc.addr); got != tc.want {
			t.Errorf("AddrGroup(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

func TestRegistryCapsAgents(t *testing.T) {
	r, _ := newTestRegistry(Limits{Grace: time.Minute, MaxAgents: 2})
	a, held := join(t, r, "a", unproven(), "192.0.2.1")
	join(t, r, "b", unproven(), "192.0.2.2")
	var limit *LimitError
	if _, err := r.Register("c", unproven(), &testAgent{id: "c", remote: "192.0.2.3"}); !errors.As(err, &limit) || limit.Group != "" {
		t.Fatalf("third agent over a cap of 2: %v; want a server_full limitError", err)
	}
	// Replacing a connected agent adds none.
	a2, _ := join(t, r, "a", proof(held), "192.0.2.1")
	r.Unregister("a", a)
	// A reservation is no connected agent: it makes room.
	r.Unregister("a", a2)
	join(t, r, "c", unproven(), "192.0.2.3")
}

// TestRegistryRelease: an agent that said goodbye frees its ID at once,
// leaving no reservation to refuse a new agent with or to charge to its
// address; one whose link dropped leaves a reservation, and the refusal
// says when it ends.
func TestRegistryRelease(t *testing.T) {
	eachRegistry(t, Limits{Grace: 5 * time.Minute, PerAddr: 1}, func(t *testing.T, r testReg, clk *fakeClock) {
		a, _ := join(t, r, "job", unproven(), "192.0.2.1")
		r.Release("job", a)
		if !free(t, r, "job") {
			t.Fatalf("the ID of an agent that said goodbye is not free")
		}
		// No reservation is charged to its address: another ID from there.
		b, tb := join(t, r, "other", unproven(), "192.0.2.1")
		r.Unregister("other", b) // a dropped link
		_, err := r.Register("other", unproven(), &testAgent{id: "other", remote: "192.0.2.9"})
		var res *ReservedError
		if !errors.As(err, &res) || !errors.Is(err, ErrIDReserved) || !res.Until.Equal(clk.t.Add(5*time.Minute)) {
			t.Fatalf("Register of a dropped agent's ID: %v (%+v), want a ReservedError until %v", err, res, clk.t.Add(5*time.Minute))
		}
		// The agent comes back with its token, taking over its reservation,
		// and then says goodbye before its welcome: the ID frees all the same.
		c := &testAgent{id: "other", remote: "192.0.2.1", tenure: tb}
		if _, err := r.Register("other", proof(tb), c); err != nil {
			t.Fatalf("the dropped agent's return: %v", err)
		}
		r.Release("other", c)
		if !free(t, r, "other") {
			t.Fatalf("the ID is still kept after the agent that came back said goodbye")
		}
		join(t, r, "third", unproven(), "192.0.2.1") // nothing left charged to the address
	})
}
