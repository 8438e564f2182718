package server

import (
	"sync"
	"time"

	"github.com/converge-ci/converge/server/internal/registry"
)

// failLimiter slows password guessing on the sessions view. Each address
// group (see registry.AddrGroup: an IPv6 /64 counts as one) may fail maxFails times
// per window; after that its requests are refused until its window ends,
// right password or not. All groups together may fail budget times per
// window: past that, every request is refused until the oldest failures
// age out, so a guesser with many addresses gains nothing by spreading.
//
// Memory is bounded by budget (each group held has failed at least once),
// and forgetting is first in, first out: every window has the same
// length, so the group that started its window first ends it first, and
// each failure costs O(1) however many groups are held.
type failLimiter struct {
	maxFails int
	budget   int
	window   time.Duration
	now      func() time.Time

	mu    sync.Mutex
	fails map[string]*failCount
	order []*failCount // windows by start time; order[head:] are live
	head  int
	total int // failures in live windows
}

type failCount struct {
	group string
	n     int
	until time.Time // end of this group's window
}

func newFailLimiter(maxFails, budget int, window time.Duration, now func() time.Time) *failLimiter {
	return &failLimiter{maxFails: maxFails, budget: budget, window: window, now: now, fails: make(map[string]*failCount)}
}

// blocked reports whether addr's group has used up its failures in its
// window, or all groups have used up the budget.
func (l *failLimiter) blocked(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked(l.now())
	if l.total >= l.budget {
		return true
	}
	f := l.fails[registry.AddrGroup(addr)]
	return f != nil && f.n >= l.maxFails
}

// fail records a failure from addr.
func (l *failLimiter) fail(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.expireLocked(now)
	if l.total >= l.budget {
		return // refused anyway; holding more would only cost memory
	}
	g := registry.AddrGroup(addr)
	f := l.fails[g]
	if f == nil {
		f = &failCount{group: g, until: now.Add(l.window)}
		l.fails[g] = f
		l.order = append(l.order, f)
	}
	f.n++
	l.total++
}

// expireLocked forgets the windows that ended by now, oldest first.
func (l *failLimiter) expireLocked(now time.Time) {
	for l.head < len(l.order) && !now.Before(l.order[l.head].until) {
		f := l.order[l.head]
		l.order[l.head] = nil
		l.head++
		delete(l.fails, f.group)
		l.total -= f.n
	}
	if l.head > 0 && l.head >= len(l.order)/2 { // reuse the slice's front
		n := copy(l.order, l.order[l.head:])
		clear(l.order[n:])
		l.order = l.order[:n]
		l.head = 0
	}
}
