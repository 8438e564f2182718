package server

import (
	"context"
	"sync"
	"time"

	"github.com/converge-ci/converge/server/internal/registry"
)

// Default limits. CI runners behind one NAT share an address, so the
// agent limit per address is generous; a user rarely needs more than a few
// dozen simultaneous streams. A reservation costs a few hundred bytes:
// 10,000 are a few MB, and far more than the agents that drop and come
// back within one grace period on a busy server.
//
// The server-wide caps keep the server up when everything else holds.
// Measured (RSS of the server process, idle connections on loopback): an
// agent costs about 18 KB (35 KB before its control connection dropped
// net/http's buffers and goroutine) and one file descriptor; a client
// stream about 70 KB, up to 200 KB once data has filled its two 64 KiB
// relay buffers, and two descriptors (six when two raw legs are spliced
// in the kernel, through a pipe each way). 20,000 agents and 10,000
// streams are then 0.35 GB plus 0.7 to 2 GB, and up to 80,000 descriptors: refusing beyond
// that with 503 beats being killed for memory with every session on
// board.
const (
	DefaultMaxAgentsPerAddr  = 100
	DefaultMaxStreamsPerAddr = 256
	DefaultMaxReservations   = 10000
	DefaultMaxAgents         = 20000
	DefaultMaxStreams        = 10000
	DefaultMaxRegistering    = 128
	registeringWait          = 10 * time.Second // how long an agent waits for a place before a 503
)

// gate lets at most its size in at once (nil: unlimited); the others
// wait their turn, parked, in the order they came.
type gate chan struct{}

func newGate(size int) gate {
	if size <= 0 {
		return nil
	}
	return make(gate, size)
}

// enter takes a place, waiting for one until ctx ends; then it reports
// false, taking none.
func (g gate) enter(ctx context.Context) bool {
	if g == nil {
		return true
	}
	select {
	case g <- struct{}{}:
		return true
	default:
	}
	select {
	case g <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// leave gives back a place enter took.
func (g gate) leave() {
	if g != nil {
		<-g
	}
}

// addrLimiter counts what each address group (see registry.AddrGroup) holds open
// against a limit, and what all hold against a server-wide cap, so neither
// one hostile network nor many can exhaust the server. Its memory is
// bounded by the number of groups with something open.
type addrLimiter struct {
	what    string // "client streams", for errors
	perAddr int    // <= 0: unlimited
	total   int    // <= 0: unlimited

	mu  sync.Mutex
	n   map[string]int
	sum int
}

func newAddrLimiter(what string, perAddr, total int) *addrLimiter {
	return &addrLimiter{what: what, perAddr: perAddr, total: total, n: make(map[string]int)}
}

// acquire takes one slot for addr. It returns a *registry.LimitError,
// taking nothing, when addr's group is at its limit or the server at its
// cap.
func (l *addrLimiter) acquire(addr string) *registry.LimitError {
	g := registry.AddrGroup(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perAddr > 0 && l.n[g] >= l.perAddr {
		return &registry.LimitError{What: l.what, Group: g, Limit: l.perAddr}
	}
	if l.total > 0 && l.sum >= l.total {
		return &registry.LimitError{What: l.what, Limit: l.total}
	}
	l.n[g]++
	l.sum++
	return nil
}

// release gives back a slot acquire took for addr.
func (l *addrLimiter) release(addr string) {
	g := registry.AddrGroup(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sum--
	if l.n[g] <= 1 {
		delete(l.n, g)
		return
	}
	l.n[g]--
}

// limitDefault resolves a Config limit: 0 means def, negative unlimited.
func limitDefault(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return -1
	}
	return v
}
