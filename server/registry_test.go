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

func TestRegistry(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	r := newMemRegistry(5*time.Minute, clk.now)
	a1, a2, a3 := &agentConn{id: "job"}, &agentConn{id: "job"}, &agentConn{id: "job"}

	secret, old, err := r.Register("job", "", a1)
	if err != nil || secret == "" || old != nil {
		t.Fatalf("first Register = %q, %v, %v; want a secret", secret, old, err)
	}
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
	r := newMemRegistry(time.Minute, time.Now)
	const old = "0123456789abcdef0123456789abcdef"
	s, _, err := r.Register("job", old, &agentConn{})
	if err != nil || s != old {
		t.Fatalf("Register = %q, %v; want %q", s, err, old)
	}
}

func TestRegistryForgetsExpiredReservations(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	r := newMemRegistry(time.Minute, clk.now)
	for i := range 100 {
		a := &agentConn{}
		id := fmt.Sprint("job-", i)
		r.Register(id, "", a)
		r.Unregister(id, a)
	}
	clk.t = clk.t.Add(2 * time.Minute)
	r.Register("fresh", "", &agentConn{})
	if n := len(r.entries); n != 1 {
		t.Fatalf("registry holds %d entries after reservations expired, want 1", n)
	}
}

func TestRegistryNoGrace(t *testing.T) {
	r := newMemRegistry(-1, time.Now)
	a := &agentConn{}
	r.Register("job", "", a)
	r.Unregister("job", a)
	if _, _, err := r.Register("job", "", &agentConn{}); err != nil {
		t.Fatalf("with grace off, Register after Unregister: %v", err)
	}
}

func TestRegistryConcurrentClaims(t *testing.T) {
	r := newMemRegistry(time.Minute, time.Now)
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
