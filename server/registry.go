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

// Registry maps rendezvous IDs to connected agents. It is an interface so
// that a distributed registry can replace the in-memory one without
// touching the handlers. Implementations are safe for concurrent use.
type Registry interface {
	// Register makes a the holder of id. secret is what the agent presented
	// ("" on first registration); Register returns the secret the agent must
	// present to take the ID back after losing its link. A connected holder
	// that presents the right secret is replaced (its old link is dead but
	// not yet noticed) and returned as old, for the caller to close.
	Register(id, secret string, a *agentConn) (newSecret string, old *agentConn, err error)
	// Unregister removes a if it still holds id, and keeps id reserved for
	// it for the grace period.
	Unregister(id string, a *agentConn)
	// Lookup returns the connected agent holding id, or nil.
	Lookup(id string) *agentConn
	// Agents returns the connected agents ordered by ID.
	Agents() []*agentConn
}

type memRegistry struct {
	grace time.Duration
	now   func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
}

type entry struct {
	agent  *agentConn // nil while reserved
	secret string
	left   time.Time // when agent went away
}

func newMemRegistry(grace time.Duration, now func() time.Time) *memRegistry {
	return &memRegistry{grace: grace, now: now, entries: make(map[string]*entry)}
}

func (r *memRegistry) Register(id, secret string, a *agentConn) (string, *agentConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[id]
	proven := e != nil && secret != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(e.secret)) == 1
	switch {
	case e == nil:
	case proven:
	case e.agent != nil:
		return "", nil, ErrIDInUse
	case r.now().Sub(e.left) < r.grace:
		return "", nil, ErrIDReserved
	}
	if secret == "" {
		secret = wire.NewToken()
	}
	var old *agentConn
	if e != nil {
		old = e.agent
	}
	r.entries[id] = &entry{agent: a, secret: secret}
	// Forget reservations that have run out, so the map stays bounded by
	// the agents seen within one grace period.
	now := r.now()
	for k, e := range r.entries {
		if e.agent == nil && now.Sub(e.left) >= r.grace {
			delete(r.entries, k)
		}
	}
	return secret, old, nil
}

func (r *memRegistry) Unregister(id string, a *agentConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[id]; e != nil && e.agent == a {
		if r.grace <= 0 {
			delete(r.entries, id)
			return
		}
		e.agent = nil
		e.left = r.now()
	}
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
