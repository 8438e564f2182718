package registry

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Memory is the Registry of a single server, in its memory.
//
// Every entry is charged to one address group (see AddrGroup): a
// connected agent to its own, a reservation to that of the agent that
// left it; the per-address limit counts both. The grace period is one constant, so
// reservations expire in the order they were made: they wait in a FIFO
// queue, expired ones are dropped from its front when the registry
// changes, and, when MaxReserved are held, making one drops the oldest.
// Reservations that ended early (taken back, dropped) stay in the queue
// until they reach its front or the queue is compacted.
type Memory[V Agent] struct {
	limits Limits
	now    func() time.Time
	epoch  uint32 // Unix seconds it was made at: it knows every tenure since (see Registry)

	mu       sync.Mutex
	entries  map[string]*entry[V]
	charged  map[string]int // entries charged per address group
	agents   int            // entries an agent holds
	queue    []*reservation // oldest first; may hold ended ones
	reserved int            // live reservations: entries whose res is set
}

type entry[V Agent] struct {
	agent  V      // while held (held set)
	held   bool   // an agent holds the ID; else only reserved
	group  string // agent's address group
	tenure Tenure // agent's; while only reserved, see res
	// issued: when the token agent proved its tenure with was signed
	// (Unix seconds); for a fresh tenure, when it began.
	issued uint32
	// proven: agent proved its tenure with a token.
	proven bool
	// confirmed: agent completed its hello and welcome.
	confirmed bool
	// res is the reservation of the ID: while no agent holds it, the one that
	// holds it; while an unconfirmed agent holds it, the one that agent
	// took over by proving its secret, restored if it drops before its
	// welcome. A reservation is live while its entry points at it.
	res *reservation
}

type reservation struct {
	id     string
	tenure Tenure    // of the agent it is kept for
	issued uint32    // that agent's entry.issued
	group  string    // address group of the agent that left it; charged while no agent holds the ID
	until  time.Time // when it expires
}

// NewMemory returns an empty in-memory registry with limits, telling time
// by now; its epoch is now.
func NewMemory[V Agent](limits Limits, now func() time.Time) *Memory[V] {
	return &Memory[V]{limits: limits, now: now, epoch: unixSeconds(now()), entries: make(map[string]*entry[V]), charged: make(map[string]int)}
}

func (r *Memory[V]) Register(id string, c Claim, a V) (old V, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire()
	e := r.entries[id]
	if e != nil && !e.yields(c, r.epoch, r.limits.Grace) {
		if e.held {
			return old, false, ErrIDInUse
		}
		return old, false, &ReservedError{Until: e.res.until}
	}
	// Taking over an entry frees its charge.
	group, freed := c.Group, ""
	if e != nil {
		freed = r.chargedTo(e)
	}
	if max := r.limits.PerAddr; max > 0 && freed != group && r.charged[group] >= max {
		return old, false, &LimitError{What: "agents", Group: group, Limit: max, Reserved: r.limits.Grace > 0}
	}
	newAgent := e == nil || !e.held
	if max := r.limits.MaxAgents; max > 0 && newAgent && r.agents >= max {
		return old, false, &LimitError{What: "agents", Limit: max}
	}
	if e == nil {
		e = &entry[V]{}
		r.entries[id] = e
	} else {
		r.uncharge(freed)
	}
	// A reservation taken over stays, uncharged, until Confirm spends it
	// or Unregister restores it. A displaced confirmed agent had earned
	// one: it is kept likewise.
	old, ok = e.agent, e.held
	if ok && e.confirmed && r.limits.Grace > 0 {
		e.res = r.reserve(id, e)
	}
	e.agent, e.held, e.group, e.tenure, e.proven, e.confirmed = a, true, group, c.Tenure, c.Proven, false
	e.issued = c.Issued
	if !c.Proven {
		e.issued = c.Tenure.since
	}
	r.charged[group]++
	if newAgent {
		r.agents++
	}
	return old, ok, nil
}

// yields reports whether claim c takes the ID from e's holder, for a
// registry that remembers every tenure since epoch (see Registry), on a
// server that keeps IDs reserved for grace. A reservation is held for an
// agent that was welcomed, so its tenure has a token out there: it
// counts as proven.
//
// Of two proven tenures the registry may have forgotten, the older wins
// only if it could still have held the ID, its reservation included,
// when the younger began (see endedBefore); else the older had ended,
// and the younger is the ID's rightful holder whichever asks first.
func (e *entry[V]) yields(c Claim, epoch uint32, grace time.Duration) bool {
	if !c.Proven {
		return false
	}
	held, issued, proven := e.tenure, e.issued, e.proven
	if !e.held {
		held, issued, proven = e.res.tenure, e.res.issued, true
	}
	switch {
	case c.Tenure == held:
		return true
	case c.Issued > epoch: // remembered, and no longer holding: it ended here
		return false
	case !proven:
		return true
	case c.Tenure.before(held):
		return !endedBefore(c.Issued, held, grace)
	case held.before(c.Tenure):
		return endedBefore(issued, c.Tenure, grace)
	}
	return false
}

// endedBefore reports whether a tenure whose latest token was signed at
// issued (Unix seconds) had surely ended before tenure t began: its
// agent's link lasted at most TokenRefresh past that token (or it would
// hold a newer one), and its reservation at most grace more. Tokens stay
// valid a little longer (see Tokens), so without this rule a token of an
// ended tenure would beat the tenure that followed it after a restart.
func endedBefore(issued uint32, t Tenure, grace time.Duration) bool {
	return int64(issued)+int64((TokenRefresh+max(grace, 0))/time.Second) < int64(t.since)
}

func (r *Memory[V]) Confirm(id string, a V) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[id]; e != nil && e.held && e.agent == a {
		e.confirmed = true
		if e.res != nil {
			e.res = nil
			r.reserved--
		}
	}
}

func (r *Memory[V]) Unregister(id string, a V) { r.unregister(id, a, true) }

func (r *Memory[V]) Release(id string, a V) { r.unregister(id, a, false) }

// unregister is Unregister, or with keep false Release.
func (r *Memory[V]) unregister(id string, a V, keep bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire()
	e := r.entries[id]
	if e == nil || !e.held || e.agent != a {
		return
	}
	r.uncharge(e.group)
	r.agents--
	var none V
	e.agent, e.held = none, false
	if !keep && e.res != nil { // the reservation it took over ends with it
		e.res = nil
		r.reserved--
	}
	if keep && e.confirmed && r.limits.Grace > 0 {
		e.res = r.reserve(id, e)
	}
	if e.res == nil {
		delete(r.entries, id)
		return
	}
	r.charged[e.res.group]++
}

// reserve queues a new reservation of id for the tenure of e's agent,
// dropping the oldest reservation when MaxReserved are held. The caller
// points id's entry at it, and charges it while no agent holds the ID;
// r.mu is held.
func (r *Memory[V]) reserve(id string, e *entry[V]) *reservation {
	for max := r.limits.MaxReserved; max > 0 && r.reserved >= max && len(r.queue) > 0; {
		r.pop()
	}
	res := &reservation{id: id, tenure: e.tenure, issued: e.issued, group: e.group, until: r.now().Add(r.limits.Grace)}
	r.queue = append(r.queue, res)
	r.reserved++
	return res
}

// expire ends the reservations whose time has come, and compacts the
// queue when ended reservations fill most of it; r.mu is held.
func (r *Memory[V]) expire() {
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
func (r *Memory[V]) pop() {
	res := r.queue[0]
	r.queue[0] = nil
	r.queue = r.queue[1:]
	e := r.entries[res.id]
	if e == nil || e.res != res {
		return // ended earlier
	}
	e.res = nil
	r.reserved--
	if !e.held {
		delete(r.entries, res.id)
		r.uncharge(res.group)
	}
}

// chargedTo is the address group e is charged to; r.mu is held.
func (r *Memory[V]) chargedTo(e *entry[V]) string {
	if e.held {
		return e.group
	}
	return e.res.group
}

func (r *Memory[V]) uncharge(group string) {
	if r.charged[group] <= 1 {
		delete(r.charged, group)
		return
	}
	r.charged[group]--
}

// Route answers the agent holding id here, if one does: a single server
// has no other replica to send a client to.
func (r *Memory[V]) Route(_ context.Context, id string) (a V, here bool, owner string, err error) {
	a, here = r.Lookup(id)
	return a, here, "", nil
}

func (r *Memory[V]) Lookup(id string) (a V, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[id]; e != nil && e.held {
		return e.agent, true
	}
	return a, false
}

func (r *Memory[V]) Agents() []V {
	r.mu.Lock()
	type held struct {
		id string
		a  V
	}
	list := make([]held, 0, len(r.entries))
	for id, e := range r.entries {
		if e.held {
			list = append(list, held{id, e.agent})
		}
	}
	r.mu.Unlock()
	return sortedByID(list, func(h held) (string, V) { return h.id, h.a })
}

// sortedByID returns the agents of list ordered by their IDs.
func sortedByID[T any, V Agent](list []T, idOf func(T) (string, V)) []V {
	sort.Slice(list, func(i, j int) bool { a, _ := idOf(list[i]); b, _ := idOf(list[j]); return a < b })
	out := make([]V, len(list))
	for i, x := range list {
		_, out[i] = idOf(x)
	}
	return out
}
