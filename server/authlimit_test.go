package server

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestFailLimiter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	l := newFailLimiter(3, 1000, time.Minute, clk.now)
	for i := range 3 {
		if l.blocked("192.0.2.1") {
			t.Fatalf("blocked after %d failures, want 3 allowed", i)
		}
		l.fail("192.0.2.1")
	}
	if !l.blocked("192.0.2.1") {
		t.Fatal("not blocked after 3 failures")
	}
	if l.blocked("192.0.2.2") {
		t.Fatal("another address is blocked too")
	}
	clk.t = clk.t.Add(time.Minute)
	if l.blocked("192.0.2.1") {
		t.Fatal("still blocked after the window")
	}
	// Ended windows are forgotten, so memory stays bounded.
	for i := range 100 {
		l.fail(fmt.Sprint("x", i))
	}
	clk.t = clk.t.Add(2 * time.Minute)
	l.fail("late")
	if n, q := len(l.fails), len(l.order)-l.head; n != 1 || q != 1 {
		t.Fatalf("limiter holds %d groups (%d queued), want 1", n, q)
	}
}

// TestFailLimiterGroupsIPv6By64: every address of one /64 is one guesser
// (issue 18, finding 6), as for the per-address agent limits.
func TestFailLimiterGroupsIPv6By64(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	l := newFailLimiter(3, 1000, time.Minute, clk.now)
	for i := range 3 {
		l.fail(fmt.Sprintf("2001:db8:1:2::%x", i+1))
	}
	if !l.blocked("2001:db8:1:2::ffff") {
		t.Error("a fresh address in the same /64 is not blocked after 3 failures in it")
	}
	if l.blocked("2001:db8:1:3::1") {
		t.Error("the next /64 is blocked too")
	}
}

// TestFailLimiterBudget: many addresses together may not fail more than
// the budget per window; past it everyone waits, and memory stays at the
// budget however many addresses try.
func TestFailLimiterBudget(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	l := newFailLimiter(3, 100, time.Minute, clk.now)
	base := netip.MustParseAddr("10.0.0.0")
	a := base
	for range 40000 {
		a = a.Next()
		if !l.blocked(a.String()) {
			l.fail(a.String())
		}
	}
	if len(l.fails) != 100 || l.total != 100 {
		t.Fatalf("holds %d groups, %d failures; want the budget, 100", len(l.fails), l.total)
	}
	if !l.blocked("192.0.2.1") {
		t.Fatal("an address that never failed is not refused once the budget is spent")
	}
	clk.t = clk.t.Add(time.Minute)
	if l.blocked("192.0.2.1") {
		t.Fatal("still refused after the window")
	}
	l.fail("192.0.2.1")
	if len(l.fails) != 1 {
		t.Fatalf("holds %d groups after the window, want 1", len(l.fails))
	}
}

// BenchmarkFailLimiterSpread: one failure each from 40,000 addresses
// within a window. Forgetting is first in, first out, so this is linear
// (it was quadratic: 9.2 s of CPU for 40,000 before the FIFO).
func BenchmarkFailLimiterSpread(b *testing.B) {
	for b.Loop() {
		clk := &fakeClock{t: time.Unix(0, 0)}
		l := newFailLimiter(10, 1<<20, time.Minute, clk.now)
		a := netip.MustParseAddr("10.0.0.0")
		for range 40000 {
			a = a.Next()
			clk.t = clk.t.Add(time.Millisecond)
			l.fail(a.String())
		}
	}
}
