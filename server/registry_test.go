package server

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestRegistry(limits registryLimits) (*memRegistry, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	return newMemRegistry(limits, clk.now), clk
}

// join registers and confirms a new agent from remote as id, as a whole
// hello/welcome does, and returns it with its secret.
func join(t *testing.T, r Registry, id, secret, remote string) (*agentConn, string) {
	t.Helper()
	a := &agentConn{id: id, remote: remote}
	s, _, err := r.Register(id, secret, a)
	if err != nil {
		t.Fatalf("Register(%q) from %s: %v", id, remote, err)
	}
	r.Confirm(id, a)
	return a, s
}

// free reports whether a stranger may take id now; if so, it leaves it
// free again.
func free(t *testing.T, r Registry, id string) bool {
	t.Helper()
	a := &agentConn{id: id, remote: "stranger"}
	_, _, err := r.Register(id, "", a)
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
	r, clk := newTestRegistry(registryLimits{grace: 5 * time.Minute})
	a1, a2, a3 := &agentConn{id: "job"}, &agentConn{id: "job"}, &agentConn{id: "job"}

	secret, old, err := r.Register("job", "", a1)
	if err != nil || secret == "" || old != nil {
		t.Fatalf("first Register = %q, %v, %v; want a secret", secret, old, err)
	}
	r.Confirm("job", a1)
	if got := r.Lookup("job"); got != a1 {
		t.Fatalf("Lookup = %p, want a1 %p", got, a1)
	}
	// A second agent without the secret is refused while a1 is connected.
	if _, _, err := r.Register("job", "", a2); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("duplicate Register err = %v, want ErrIDInUse", err)
	}
	if _, _, err := r.Register("job", "0123456789abcdef0123456789abcdef", a2); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("Register with a wrong secret err = %v, want ErrIDInUse", err)
	}
	// The same agent reconnecting before its old link was noticed dead
	// replaces it and gets the old connection back to close.
	s2, old, err := r.Register("job", secret, a2)
	if err != nil || old != a1 || s2 != secret {
		t.Fatalf("re-Register = %q, %p, %v; want same secret and old a1", s2, old, err)
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
	if _, _, err := r.Register("job", "", a3); !errors.Is(err, ErrIDReserved) {
		t.Fatalf("Register during grace err = %v, want ErrIDReserved", err)
	}
	if _, _, err := r.Register("job", secret, a3); err != nil {
		t.Fatalf("owner Register during grace: %v", err)
	}
	r.Confirm("job", a3)
	r.Unregister("job", a3)
	// After the grace period anyone may take it, with a new secret.
	clk.t = clk.t.Add(6 * time.Minute)
	s4, _, err := r.Register("job", "", a1)
	if err != nil || s4 == secret {
		t.Fatalf("Register after grace = %q, %v; want a fresh secret", s4, err)
	}
}

func TestRegistryAdoptsSecretAfterRestart(t *testing.T) {
	// A restarted server knows nothing; an agent presenting its old secret
	// keeps it, so it can come back again later.
	r, _ := newTestRegistry(registryLimits{grace: time.Minute})
	const old = "0123456789abcdef0123456789abcdef"
	s, _, err := r.Register("job", old, &agentConn{})
	if err != nil || s != old {
		t.Fatalf("Register = %q, %v; want %q", s, err, old)
	}
}

// TestRegistryUnconfirmedLeavesNothing: a claim whose agent never
// completed its hello leaves no reservation (issue 10, finding 1).
func TestRegistryUnconfirmedLeavesNothing(t *testing.T) {
	r, _ := newTestRegistry(registryLimits{grace: time.Minute, perAddr: 2})
	for i := range 10 {
		id := fmt.Sprint("squat-", i)
		a := &agentConn{id: id, remote: "198.51.100.7"}
		if _, _, err := r.Register(id, "", a); err != nil {
			t.Fatalf("claim %d: %v", i, err)
		}
		r.Unregister(id, a)
		if !free(t, r, id) {
			t.Fatalf("%s is still held after a claim that never said hello", id)
		}
	}
	if len(r.entries) != 0 || len(r.charged) != 0 || r.reserved != 0 {
		t.Errorf("after unconfirmed claims: %d entries, %d addresses charged, %d reserved; want none", len(r.entries), len(r.charged), r.reserved)
	}
}

// TestRegistryProvenClaimKeepsReservation: an agent that proves its
// secret and drops before its welcome leaves its reservation as it was,
// expiring when it would have.
func TestRegistryProvenClaimKeepsReservation(t *testing.T) {
	r, clk := newTestRegistry(registryLimits{grace: time.Minute})
	a, secret := join(t, r, "job", "", "192.0.2.1")
	r.Unregister("job", a) // reserved until +1m
	clk.t = clk.t.Add(40 * time.Second)
	b := &agentConn{id: "job", remote: "192.0.2.2"}
	if _, _, err := r.Register("job", secret, b); err != nil {
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
// by a proven claim keeps its ID reserved if the claim drops before its
// welcome.
func TestRegistryDisplacedAgentKeepsReservation(t *testing.T) {
	r, _ := newTestRegistry(registryLimits{grace: time.Minute})
	a, secret := join(t, r, "job", "", "192.0.2.1")
	b := &agentConn{id: "job", remote: "192.0.2.1"}
	if _, old, err := r.Register("job", secret, b); err != nil || old != a {
		t.Fatalf("proven claim = %p, %v; want old a", old, err)
	}
	r.Unregister("job", a) // the old handler ends: nothing of it is left
	r.Unregister("job", b)
	if free(t, r, "job") {
		t.Fatal("the displaced agent's ID was freed by a claim that dropped before its welcome")
	}
	c := &agentConn{id: "job", remote: "192.0.2.1"}
	if _, _, err := r.Register("job", secret, c); err != nil {
		t.Fatalf("owner back: %v", err)
	}
}

// TestRegistryChargesReservationsToTheirAddress: per-address limits count
// connected agents and the reservations they left, at the address that
// held the agent; taking a reservation back moves its charge.
func TestRegistryChargesReservationsToTheirAddress(t *testing.T) {
	const home, away = "192.0.2.1", "198.51.100.1"
	r, clk := newTestRegistry(registryLimits{grace: time.Minute, perAddr: 2})
	a, secretA := join(t, r, "a", "", home)
	b, secretB := join(t, r, "b", "", home)
	r.Unregister("a", a)
	r.Unregister("b", b)
	var limit *limitError
	if _, _, err := r.Register("c", "", &agentConn{id: "c", remote: home}); !errors.As(err, &limit) || limit.addr != home || limit.limit != 2 {
		t.Fatalf("third from %s with two reservations: %v; want a limitError for it", home, err)
	}
	// Coming back from the same address moves the charge: allowed at the limit.
	a2, _ := join(t, r, "a", secretA, home)
	// From another address at its own limit: refused, the reservation stays.
	join(t, r, "x", "", away)
	join(t, r, "y", "", away)
	if _, _, err := r.Register("b", secretB, &agentConn{id: "b", remote: away}); !errors.As(err, &limit) || limit.addr != away {
		t.Fatalf("b back from full %s: %v; want a limitError", away, err)
	}
	if free(t, r, "b") {
		t.Fatal("a refused claim freed the reservation")
	}
	r.Unregister("a", a2)
	clk.t = clk.t.Add(time.Minute)
	if _, _, err := r.Register("c", "", &agentConn{id: "c", remote: home}); err != nil {
		t.Fatalf("after the reservations expired, Register from %s: %v", home, err)
	}
	if got := r.charged[home]; got != 1 {
		t.Errorf("%s is charged %d, want 1", home, got)
	}
}

// TestRegistryCapsReservations: when maxReserved are held, a new
// reservation drops the oldest.
func TestRegistryCapsReservations(t *testing.T) {
	r, clk := newTestRegistry(registryLimits{grace: time.Minute, maxReserved: 3})
	for i := range 4 {
		id := fmt.Sprint("job-", i)
		a, _ := join(t, r, id, "", fmt.Sprint("192.0.2.", i))
		r.Unregister(id, a)
		clk.t = clk.t.Add(time.Second)
	}
	for i, want := range []bool{true, false, false, false} {
		if got := free(t, r, fmt.Sprint("job-", i)); got != want {
			t.Errorf("job-%d free = %v, want %v (the oldest of 4 reservations over a cap of 3 is dropped)", i, got, want)
		}
	}
	if r.reserved != 3 || len(r.charged) != 3 {
		t.Errorf("%d reserved, %d addresses charged; want 3 and 3", r.reserved, len(r.charged))
	}
}

// TestRegistryExpiresWithoutScanning: expired reservations are forgotten
// from the front of the queue, and reservations taken back early do not
// pile up in it.
func TestRegistryExpiresWithoutScanning(t *testing.T) {
	r, clk := newTestRegistry(registryLimits{grace: time.Minute})
	for i := range 100 {
		id := fmt.Sprint("job-", i)
		a, _ := join(t, r, id, "", "192.0.2.1")
		r.Unregister(id, a)
	}
	clk.t = clk.t.Add(2 * time.Minute)
	join(t, r, "fresh", "", "192.0.2.1")
	if len(r.entries) != 1 || len(r.queue) != 0 || r.reserved != 0 {
		t.Fatalf("after reservations expired: %d entries, %d queued, %d reserved; want 1, 0, 0", len(r.entries), len(r.queue), r.reserved)
	}
	// One agent dropping and coming back 10,000 times within the grace.
	a, secret := join(t, r, "flappy", "", "192.0.2.1")
	for range 10000 {
		r.Unregister("flappy", a)
		a, _ = join(t, r, "flappy", secret, "192.0.2.1")
	}
	if len(r.queue) > 100 {
		t.Errorf("queue holds %d reservations for one live one; ended ones must not pile up", len(r.queue))
	}
}

func TestRegistryNoGrace(t *testing.T) {
	r, _ := newTestRegistry(registryLimits{grace: -1})
	a, _ := join(t, r, "job", "", "192.0.2.1")
	r.Unregister("job", a)
	if _, _, err := r.Register("job", "", &agentConn{}); err != nil {
		t.Fatalf("with grace off, Register after Unregister: %v", err)
	}
}

func TestRegistryConcurrentClaims(t *testing.T) {
	r, _ := newTestRegistry(registryLimits{grace: time.Minute})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := r.Register("race", "", &agentConn{}); err == nil {
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
