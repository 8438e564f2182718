package server

import (
	"fmt"
	"net/http"
	"net/netip"
	"sync"
)

// Default limits. CI runners behind one NAT share an address, so the
// agent limit per address is generous; a user rarely needs more than a few
// dozen simultaneous streams. A reservation costs a few hundred bytes:
// 10,000 are a few MB, and far more than the agents that drop and come
// back within one grace period on a busy server.
//
// The server-wide caps keep the server up when everything else holds.
// Measured (RSS of the server process, idle connections on loopback): an
// agent costs about 35 KB and one file descriptor; a client stream about
// 70 KB, up to 200 KB once data has filled its two 64 KiB relay buffers,
// and two descriptors (six when two raw legs are spliced in the kernel,
// through a pipe each way). 20,000 agents and 10,000 streams are then
// 0.7 GB plus 0.7 to 2 GB, and up to 80,000 descriptors: refusing beyond
// that with 503 beats being killed for memory with every session on
// board.
const (
	DefaultMaxAgentsPerAddr  = 100
	DefaultMaxStreamsPerAddr = 256
	DefaultMaxReservations   = 10000
	DefaultMaxAgents         = 20000
	DefaultMaxStreams        = 10000
)

// addrGroup is the key per-address limits count by: an IPv4 address
// (IPv4-mapped IPv6 included) as itself, an IPv6 address by its /64,
// since one host or one customer's network commonly holds a whole /64. A
// string that is no IP address is its own group.
func addrGroup(addr string) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	return netip.PrefixFrom(a, 64).Masked().String()
}

// addrLimiter counts what each address group (see addrGroup) holds open
// against a limit, and what all hold against a server-wide cap, so neither
// one hostile network nor many can exhaust the server. Its memory is
// bounded by the number of groups with something open.
type addrLimiter struct {
	what    string // "client streams", for errors
	reason  string // of refusals at the per-address limit, for metrics
	perAddr int    // <= 0: unlimited
	total   int    // <= 0: unlimited

	mu  sync.Mutex
	n   map[string]int
	sum int
}

func newAddrLimiter(what, reason string, perAddr, total int) *addrLimiter {
	return &addrLimiter{what: what, reason: reason, perAddr: perAddr, total: total, n: make(map[string]int)}
}

// acquire takes one slot for addr. It returns a *limitError, taking
// nothing, when addr's group is at its limit or the server at its cap.
func (l *addrLimiter) acquire(addr string) *limitError {
	g := addrGroup(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perAddr > 0 && l.n[g] >= l.perAddr {
		return &limitError{what: l.what, reason: l.reason, addr: g, limit: l.perAddr}
	}
	if l.total > 0 && l.sum >= l.total {
		return &limitError{what: l.what, reason: reasonServerFull, limit: l.total}
	}
	l.n[g]++
	l.sum++
	return nil
}

// release gives back a slot acquire took for addr.
func (l *addrLimiter) release(addr string) {
	g := addrGroup(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sum--
	if l.n[g] <= 1 {
		delete(l.n, g)
		return
	}
	l.n[g]--
}

// limitError refuses a registration or a client stream over a limit. Its
// message tells the user what happened and what to do.
type limitError struct {
	what     string // "agents", "client streams"
	reason   string // for metrics and logs: reasonServerFull or a per-address reason
	addr     string // the address group over its limit; "": the server is at its cap
	limit    int
	reserved bool // reservations count against the limit
}

func (e *limitError) Error() string {
	if e.addr == "" {
		return fmt.Sprintf("this server holds as many %s as it allows (%d); try again later, or ask its operator to raise the limit", e.what, e.limit)
	}
	msg := fmt.Sprintf("too many %s from %s (limit %d", e.what, e.addr, e.limit)
	if e.reserved {
		msg += ", counting IDs kept for agents that dropped recently"
	}
	return msg + "); close some, or ask the server's operator to raise the limit"
}

// refuse answers the request that was over the limit: 429 when its
// address is at its limit, 503 (try later, or elsewhere) when the server
// is full.
func (e *limitError) refuse(w http.ResponseWriter) {
	status := http.StatusTooManyRequests
	if e.addr == "" {
		status = http.StatusServiceUnavailable
	}
	http.Error(w, e.Error(), status)
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
