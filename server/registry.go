package server

import (
	"crypto/subtle"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// Registration errors.
var (
	// ErrIDInUse: a connected agent holds the ID.
	ErrIDInUse = errors.New("ID is in use by a connected agent")
	// ErrIDReserved: the agent holding the ID lost its link recently and the
	// ID is kept for it; only that agent (proving it with its secret) may take it.
	ErrIDReserved = errors.New("ID is reserved for an agent that is reconnecting")
)

// Registry maps rendezvous IDs to connected agents, and keeps the ID of an
// agent whose link dropped reserved for it for a grace period. It is an
// interface so that a distributed registry can replace the in-memory one
// without touching the handlers. Implementations are safe for concurrent
// use.
//
// A registration has two steps. Register claims the ID before the
// WebSocket upgrade, so that refusals are plain HTTP answers; Confirm
// records that the agent completed its hello and got its welcome. Only a
// confirmed agent leaves a reservation when it goes: claims cost an
// attacker nothing, reservations cost a completed handshake.
type Registry interface {
	// Register makes a the holder of id. secret is what the agent presented
	// ("" on first registration); Register returns the secret the agent must
	// present to take the ID back after losing its link. A holder, connected
	// or reserved, is replaced only when the right secret is presented; a
	// connected one is then returned as old, for the caller to close (its
	// link is dead but not yet noticed).
	//
	// Errors: ErrIDInUse and ErrIDReserved, or a *limitError when a's
	// address group (see addrGroup), or the server, holds as many agents
	// as allowed.
	Register(id, secret string, a *agentConn) (newSecret string, old *agentConn, err error)
	// Confirm records that a, holding id, completed its hello and welcome:
	// from now on its ID stays reserved for it when it drops. A
	// reservation a took over by proving its secret is spent.
	Confirm(id string, a *agentConn)
	// Unregister removes a if it still holds id. A confirmed a leaves id
	// reserved for the grace period. An unconfirmed a leaves what it found:
	// the reservation it took over, if it took one, as it was; else nothing.
	Unregister(id string, a *agentConn)
	// Lookup returns the connected agent holding id, or nil.
	Lookup(id string) *agentConn
	// Agents returns the connected agents ordered by ID.
	Agents() []*agentConn
}

// registryLimits bound what a memRegistry holds.
type registryLimits struct {
	grace       time.Duration // how long an ID stays reserved; <= 0: never
	perAddr     int           // agents plus reservations charged to one address group; <= 0: unlimited
	maxAgents   int           // agents connected (welcomed or not) in all; <= 0: unlimited
	maxReserved int           // reservations in all; <= 0: unlimited
}

// memRegistry is the in-memory Registry.
//
// Every entry is charged to one address group (see addrGroup): a
// connected agent to its own, a reservation to that of the agent that
// left it; the per-address limit counts both. The grace period is one constant, so
// reservations expire in the order they were made: they wait in a FIFO
// queue, expired ones are dropped from its front when the registry
// changes, and, when maxReserved are held, making one drops the oldest.
// Reservations that ended early (taken back, dropped) stay in the queue
// until they reach its front or the queue is compacted.
type memRegistry struct {
	limits registryLimits
	now    func() time.Time

	mu       sync.Mutex
	entries  map[string]*entry
	charged  map[string]int // entries charged per address group
	agents   int            // entries an agent holds
	queue    []*reservation // oldest first; may hold ended ones
	reserved int            // live reservations: entries whose res is set
}

type entry struct {
	agent  *agentConn // nil while only reserved
	secret string
	// confirmed: agent completed its hello and welcome.
	confirmed bool
	// res is the reservation of the ID: while agent is nil, the one that
	// holds it; while an unconfirmed agent holds it, the one that agent
	// took over by proving its secret, restored if it drops before its
	// welcome. A reservation is live while its entry points at it.
	res *reservation
}

type reservation struct {
	id    string
	group string    // address group of the agent that left it; charged while no agent holds the ID
	until time.Time // when it expires
}

func newMemRegistry(limits registryLimits, now func() time.Time) *memRegistry {
	return &memRegistry{limits: limits, now: now, entries: make(map[string]*entry), charged: make(map[string]int)}
}

func (r *memRegistry) Register(id, secret string, a *agentConn) (string, *agentConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire()
	e := r.entries[id]
	proven := e != nil && secret != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(e.secret)) == 1
	switch {
	case e == nil:
	case proven:
	case e.agent != nil:
		return "", nil, ErrIDInUse
	default:
		return "", nil, ErrIDReserved
	}
	// Taking over an entry frees its charge.
	group, freed := addrGroup(a.remote), ""
	if e != nil {
		freed = r.chargedTo(e)
	}
	if max := r.limits.perAddr; max > 0 && freed != group && r.charged[group] >= max {
		return "", nil, &limitError{what: "agents", reason: reasonAgentLimit, addr: group, limit: max, reserved: r.limits.grace > 0}
	}
	newAgent := e == nil || e.agent == nil
	if max := r.limits.maxAgents; max > 0 && newAgent && r.agents >= max {
		return "", nil, &limitError{what: "agents", reason: reasonServerFull, limit: max}
	}
	if e == nil {
		if secret == "" {
			secret = wire.NewToken()
		}
		e = &entry{secret: secret}
		r.entries[id] = e
	} else {
		r.uncharge(freed)
	}
	// A reservation taken over stays, uncharged, until Confirm spends it
	// or Unregister restores it. A displaced confirmed agent had earned
	// one: it is kept likewise.
	old := e.agent
	if old != nil && e.confirmed && r.limits.grace > 0 {
		e.res = r.reserve(id, addrGroup(old.remote))
	}
	e.agent, e.confirmed = a, false
	r.charged[group]++
	if newAgent {
		r.agents++
	}
	return e.secret, old, nil
}

func (r *memRegistry) Confirm(id string, a *agentConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[id]; e != nil && e.agent == a {
		e.confirmed = true
		if e.res != nil {
			e.res = nil
			r.reserved--
		}
	}
}

func (r *memRegistry) Unregister(id string, a *agentConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire()
	e := r.entries[id]
	if e == nil || e.agent != a {
		return
	}
	r.uncharge(addrGroup(a.remote))
	r.agents--
	e.agent = nil
	if e.confirmed && r.limits.grace > 0 {
		e.res = r.reserve(id, addrGroup(a.remote))
	}
	if e.res == nil {
		delete(r.entries, id)
		return
	}
	r.charged[e.res.group]++
}

// reserve queues a new reservation of id for an agent that was in group,
// dropping the oldest reservation when maxReserved are held. The caller
// points id's entry at it, and charges it while no agent holds the ID;
// r.mu is held.
func (r *memRegistry) reserve(id, group string) *reservation {
	for max := r.limits.maxReserved; max > 0 && r.reserved >= max && len(r.queue) > 0; {
		r.pop()
	}
	res := &reservation{id: id, group: group, until: r.now().Add(r.limits.grace)}
	r.queue = append(r.queue, res)
	r.reserved++
	return res
}

// expire ends the reservations whose time has come, and compacts the
// queue when ended reservations fill most of it; r.mu is held.
func (r *memRegistry) expire() {
	now := r.now()
	for len(r.queue) > 0 && !now.Before(r.queue[0].until) {
		r.pop()
	}
	if len(r.queue) > 64 && len(r.queue) > 4*r.reserved {
		live := r.queue[:0]
		for _, res := range r.queue {
			if e := r.entries[res.id]; e != nil && e.res == res {
				live = append(live, res)
			}
		}
		clear(r.queue[len(live):])
		r.queue = live
	}
}

// pop removes the oldest reservation from the queue and ends it if it
// still holds its ID; r.mu is held.
func (r *memRegistry) pop() {
	res := r.queue[0]
	r.queue[0] = nil
	r.queue = r.queue[1:]
	e := r.entries[res.id]
	if e == nil || e.res != res {
		return // ended earlier
	}
	e.res = nil
	r.reserved--
	if e.agent == nil {
		delete(r.entries, res.id)
		r.uncharge(res.group)
	}
}

// chargedTo is the address group e is charged to; r.mu is held.
func (r *memRegistry) chargedTo(e *entry) string {
	if e.agent != nil {
		return addrGroup(e.agent.remote)
	}
	return e.res.group
}

func (r *memRegistry) uncharge(group string) {
	if r.charged[group] <= 1 {
		delete(r.charged, group)
		return
	}
	r.charged[group]--
}

func (r *memRegistry) Lookup(id string) *agentConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[id]; e != nil {
		return e.agent
	}
	return nil
}

func (r *memRegistry) Agents() []*agentConn {
	r.mu.Lock()
	list := make([]*agentConn, 0, len(r.entries))
	for _, e := range r.entries {
		if e.agent != nil {
			list = append(list, e.agent)
		}
	}
	r.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].id < list[j].id })
	return list
}
