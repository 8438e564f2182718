package server

import (
	"fmt"
	"net/http"
	"sync"
)

// Default limits. CI runners behind one NAT share an address, so the
// agent limit per address is generous; a user rarely needs more than a few
// dozen simultaneous streams. A reservation costs a few hundred bytes:
// 10,000 are a few MB, and far more than the agents that drop and come
// back within one grace period on a busy server.
const (
	DefaultMaxAgentsPerAddr  = 100
	DefaultMaxStreamsPerAddr = 256
	DefaultMaxReservations   = 10000
)

// addrLimiter counts what each remote address holds open against a limit,
// so one misbehaving or hostile host cannot exhaust the server. Its memory
// is bounded by the number of addresses with something open.
type addrLimiter struct {
	what string // "agents" or "client streams", for errors
	max  int    // <= 0: unlimited

	mu sync.Mutex
	n  map[string]int
}

func newAddrLimiter(what string, max int) *addrLimiter {
	return &addrLimiter{what: what, max: max, n: make(map[string]int)}
}

// acquire takes one slot for addr. It reports false when addr is at its limit.
func (l *addrLimiter) acquire(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.n[addr] >= l.max {
		return false
	}
	l.n[addr]++
	return true
}

// release gives back a slot acquire took.
func (l *addrLimiter) release(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[addr] <= 1 {
		delete(l.n, addr)
		return
	}
	l.n[addr]--
}

// refuse answers a request over the limit with 429 and what to do.
func (l *addrLimiter) refuse(w http.ResponseWriter, addr string) {
	http.Error(w, fmt.Sprintf("too many %s from %s (limit %d); close some, or ask the server's operator to raise the limit", l.what, addr, l.max),
		http.StatusTooManyRequests)
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
