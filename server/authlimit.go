package server

import (
	"sync"
	"time"
)

// failLimiter slows password guessing on the sessions view: each remote
// address may fail maxFails times per window; after that its requests are
// refused until the window ends, right password or not. Memory is bounded
// by the addresses that failed within one window.
type failLimiter struct {
	maxFails int
	window   time.Duration
	now      func() time.Time

	mu    sync.Mutex
	fails map[string]*failCount
}

type failCount struct {
	n     int
	until time.Time // end of this address's window
}

func newFailLimiter(maxFails int, window time.Duration, now func() time.Time) *failLimiter {
	return &failLimiter{maxFails: maxFails, window: window, now: now, fails: make(map[string]*failCount)}
}

// blocked reports whether addr has used up its failures in this window.
func (l *failLimiter) blocked(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fails[addr]
	return f != nil && f.n >= l.maxFails && l.now().Before(f.until)
}

// fail records a failure from addr.
func (l *failLimiter) fail(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	f := l.fails[addr]
	if f == nil || !now.Before(f.until) {
		for a, g := range l.fails { // forget windows that ended
			if !now.Before(g.until) {
				delete(l.fails, a)
			}
		}
		f = &failCount{until: now.Add(l.window)}
		l.fails[addr] = f
	}
	f.n++
}
