package server

import (
	"fmt"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestFailLimiter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	l := newFailLimiter(3, time.Minute, clk.now)
	for i := range 3 {
		if l.blocked("a") {
			t.Fatalf("blocked after %d failures, want 3 allowed", i)
		}
		l.fail("a")
	}
	if !l.blocked("a") {
		t.Fatal("not blocked after 3 failures")
	}
	if l.blocked("b") {
		t.Fatal("another address is blocked too")
	}
	clk.t = clk.t.Add(time.Minute)
	if l.blocked("a") {
		t.Fatal("still blocked after the window")
	}
	// Ended windows are forgotten, so memory stays bounded.
	for i := range 100 {
		l.fail(fmt.Sprint("x", i))
	}
	clk.t = clk.t.Add(2 * time.Minute)
	l.fail("late")
	if n := len(l.fails); n != 1 {
		t.Fatalf("limiter holds %d addresses, want 1", n)
	}
}
