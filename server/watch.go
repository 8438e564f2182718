package server

import (
	"errors"
	"sync"
)

// changes tells watchers (the sessions view's event streams) that the set
// of agents or what they report has changed. A notice carries no data: a
// watcher that hears one reads the registry afresh, so notices that pile
// up while it is busy merge into one and nothing is ever queued without
// bound. Notifying never blocks, so a slow browser cannot slow a relay.
type changes struct {
	max int // most watchers at once
	// local, when set, is called on each local change (a cluster
	// publishes them); it must not block. Set before use.
	local func()

	mu       sync.Mutex
	watchers map[chan struct{}]struct{}
	closed   bool
}

// errTooManyWatchers is returned by watch when max watchers are listening.
var errTooManyWatchers = errors.New("too many watchers of the sessions view")

func newChanges(max int) *changes {
	return &changes{max: max, watchers: make(map[chan struct{}]struct{})}
}

// notify tells every watcher, and the local hook, that something
// changed here.
func (c *changes) notify() {
	if c.local != nil {
		c.local()
	}
	c.notifyWatchers()
}

// notifyWatchers tells every watcher that something changed elsewhere
// (on another replica).
func (c *changes) notifyWatchers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.watchers {
		select {
		case ch <- struct{}{}:
		default: // a notice is already pending for this watcher; it covers this one
		}
	}
}

// watch subscribes. The channel receives a notice after each change (at
// most one pending) and is closed when the server drains; stop
// unsubscribes and must be called once the caller stops reading.
func (c *changes) watch() (notices <-chan struct{}, stop func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.watchers) >= c.max {
		return nil, nil, errTooManyWatchers
	}
	ch := make(chan struct{}, 1)
	if c.closed {
		close(ch)
		return ch, func() {}, nil
	}
	c.watchers[ch] = struct{}{}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.watchers[ch]; ok {
			delete(c.watchers, ch)
			close(ch)
		}
	}, nil
}

// close ends every watch, now and later: called when the server drains,
// because http.Server.Shutdown waits for event streams that never end.
func (c *changes) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for ch := range c.watchers {
		delete(c.watchers, ch)
		close(ch)
	}
}

// count is the number of current watchers.
func (c *changes) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.watchers)
}
