package server

import (
	"errors"
	"sort"
	"sync"
	"time"
)

// Registration errors.
var (
	// ErrIDInUse: a connected agent holds the ID.
	ErrIDInUse = errors.New("ID is in use by a connected agent")
	// ErrIDReserved: the agent holding the ID lost its link recently and the
	// ID is kept for it; only that agent (proving it with its token) may take it.
	ErrIDReserved = errors.New("ID is reserved for an agent that is reconnecting")
)

// A claim is what an agent asking for an ID shows for itself.
type claim struct {
	// tenure is the one the agent's token proves, when proven; else a
	// fresh one, which begins if the claim succeeds.
	tenure tenure
	// proven: the agent presented a valid token for this ID (see tokens),
	// signed at issued (Unix seconds).
	proven bool
	issued uint32
}

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
//
// Who gets an ID is decided by tenures (see tenure), which agents prove
// with tokens that any server holding the key verifies. A registry
// remembers every tenure since its epoch (an in-memory one: since the
// server started), so that one that forgot (a restarted server) still
// decides right:
//   - An unproven claim gets a free ID, and nothing else.
//   - A proven claim takes the ID from its own tenure: the same agent
//     back, its old link dead but maybe not yet noticed.
//   - A proven claim of another tenure takes the ID only if the registry
//     may have forgotten it (its token was signed at or before the epoch)
//     and the holder has no better right: it proved nothing (after a
//     restart, whoever asked first), or it proved a younger tenure (one
//     that began while this one was forgotten). A tenure signed since the
//     epoch that no longer holds the ID ended here: its reservation
//     expired or an older tenure took the ID, and its token is no key.
type Registry interface {
	// Register makes a, claiming c, the holder of id, or refuses it. A
	// connected holder it takes the ID from is returned as old, for the
	// caller to close.
	//
	// Errors: ErrIDInUse and ErrIDReserved, or a *limitError when a's
	// address group (see addrGroup), or the server, holds as many agents
	// as allowed.
	Register(id string, c claim, a *agentConn) (old *agentConn, err error)
	// Confirm records that a, holding id, completed its hello and welcome:
	// from now on its ID stays reserved for it when it drops. A
	// reservation a took over is spent.
	Confirm(id string, a *agentConn)
	// Unregister removes a if it still holds id. A confirmed a leaves id
	// reserved for its tenure for the grace period. An unconfirmed a
	// leaves what it found: the reservation it took over, if it took one,
	// as it was; else nothing.
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
	epoch  uint32 // Unix seconds it was made at: it knows every tenure since (see Registry)

	mu       sync.Mutex
	entries  map[string]*entry
	charged  map[string]int // entries charged per address group
	agents   int            // entries an agent holds
	queue    []*reservation // oldest first; may hold ended ones
	reserved int            // live reservations: entries whose res is set
}

type entry struct {
	agent  *agentConn // nil while only reserved
	tenure tenure     // agent's; while only reserved, see res
	// proven: agent proved its tenure with a token.
	proven bool
	// confirmed: agent completed its hello and welcome.
	confirmed bool
	// res is the reservation of the ID: while agent is nil, the one that
	// holds it; while an unconfirmed agent holds it, the one that agent
	// took over by proving its secret, restored if it drops before its
	// welcome. A reservation is live while its entry points at it.
	res *reservation
}

type reservation struct {
	id     string
	tenure tenure    // of the agent it is kept for
	group  string    // address group of the agent that left it; charged while no agent holds the ID
	until  time.Time // when it expires
}

func newMemRegistry(limits registryLimits, now func() time.Time) *memRegistry {
	return &memRegistry{limits: limits, now: now, epoch: unixSeconds(now()), entries: make(map[string]*entry), charged: make(map[string]int)}
}

func (r *memRegistry) Register(id string, c claim, a *agentConn) (*agentConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire()
	e := r.entries[id]
	if e != nil && !e.yields(c, r.epoch) {
		if e.agent != nil {
			return nil, ErrIDInUse
		}
		return nil, ErrIDReserved
	}
	// Taking over an entry frees its charge.
	group, freed := addrGroup(a.remote), ""
	if e != nil {
		freed = r.chargedTo(e)
	}
	if max := r.limits.perAddr; max > 0 && freed != group && r.charged[group] >= max {
		return nil, &limitError{what: "agents", reason: reasonAgentLimit, addr: group, limit: max, reserved: r.limits.grace > 0}
	}
	newAgent := e == nil || e.agent == nil
	if max := r.limits.maxAgents; max > 0 && newAgent && r.agents >= max {
		return nil, &limitError{what: "agents", reason: reasonServerFull, limit: max}
	}
	if e == nil {
		e = &entry{}
		r.entries[id] = e
	} else {
		r.uncharge(freed)
	}
	// A reservation taken over stays, uncharged, until Confirm spends it
	// or Unregister restores it. A displaced confirmed agent had earned
	// one: it is kept likewise.
	old := e.agent
	if old != nil && e.confirmed && r.limits.grace > 0 {
		e.res = r.reserve(id, e.tenure, addrGroup(old.remote))
	}
	e.agent, e.tenure, e.proven, e.confirmed = a, c.tenure, c.proven, false
	r.charged[group]++
	if newAgent {
		r.agents++
	}
	return old, nil
}

// yields reports whether claim c takes the ID from e's holder, for a
// registry that remembers every tenure since epoch (see Registry). A
// reservation is held for an agent that was welcomed, so its tenure has a
// token out there: it counts as proven.
func (e *entry) yields(c claim, epoch uint32) bool {
	if !c.proven {
		return false
	}
	held, proven := e.tenure, e.proven
	if e.agent == nil {
		held, proven = e.res.tenure, true
	}
	if c.tenure == held {
		return true
	}
	forgotten := c.issued <= epoch
	return forgotten && (!proven || c.tenure.before(held))
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
		e.res = r.reserve(id, e.tenure, addrGroup(a.remote))
	}
	if e.res == nil {
		delete(r.entries, id)
		return
	}
	r.charged[e.res.group]++
}

// reserve queues a new reservation of id for tenure t, whose agent was in
// group, dropping the oldest reservation when maxReserved are held. The caller
// points id's entry at it, and charges it while no agent holds the ID;
// r.mu is held.
func (r *memRegistry) reserve(id string, t tenure, group string) *reservation {
	for max := r.limits.maxReserved; max > 0 && r.reserved >= max && len(r.queue) > 0; {
		r.pop()
	}
	res := &reservation{id: id, tenure: t, group: group, until: r.now().Add(r.limits.grace)}
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
