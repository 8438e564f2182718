// Package registry decides who holds a rendezvous ID: which connected
// agent, on which replica, and for whom a dropped agent's ID stays
// reserved. It holds the two registries (Memory for a single server,
// Redis for replicas sharing one), the signed tokens agents prove their
// tenure of an ID with, the key that signs them, and the address groups
// the per-address limits count by.
//
// It is not the server: it never sees a connection, links no WebSocket
// and no net/http, and stores whatever the server gives it for an agent
// (a value of type V). Its errors are typed; the server maps them to
// HTTP statuses and metric reasons.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Registration errors.
var (
	// ErrIDInUse: a connected agent holds the ID.
	ErrIDInUse = errors.New("ID is in use by a connected agent")
	// ErrIDReserved: the agent holding the ID lost its link recently and the
	// ID is kept for it; only that agent (proving it with its token) may take it.
	// Register's error wraps it in a *ReservedError saying until when.
	ErrIDReserved = errors.New("ID is reserved for an agent that is reconnecting")
	// ErrUnavailable: the shared registry (Redis) did not answer; agents retry.
	ErrUnavailable = errors.New("the registry (Redis) is unavailable")
)

// ReservedError refuses a claim of an ID kept for an agent whose link
// dropped (it Is ErrIDReserved), saying when the ID frees unless that
// agent comes back first.
type ReservedError struct {
	Until time.Time
}

func (e *ReservedError) Error() string {
	return fmt.Sprintf("%v until %s", ErrIDReserved, e.Until.UTC().Format("15:04:05 UTC"))
}

func (e *ReservedError) Is(target error) bool { return target == ErrIDReserved }

// LimitError refuses a registration (or, for the server, a client stream)
// over a limit. Its message tells the user what happened and what to do.
type LimitError struct {
	What     string // "agents", "client streams"
	Group    string // the address group over its limit; "": the server is at its cap
	Limit    int
	Reserved bool // reservations count against the limit
}

func (e *LimitError) Error() string {
	if e.Group == "" {
		return fmt.Sprintf("this server holds as many %s as it allows (%d); try again later, or ask its operator to raise the limit", e.What, e.Limit)
	}
	msg := fmt.Sprintf("too many %s from %s (limit %d", e.What, e.Group, e.Limit)
	if e.Reserved {
		msg += ", counting IDs kept for agents that dropped recently"
	}
	return msg + "); close some, or ask the server's operator to raise the limit"
}

// A Claim is what an agent asking for an ID shows for itself.
type Claim struct {
	// Tenure is the one the agent's token proves, when proven; else a
	// fresh one, which begins if the claim succeeds.
	Tenure Tenure
	// Proven: the agent presented a valid token for this ID (see Tokens),
	// signed at Issued (Unix seconds).
	Proven bool
	Issued uint32
	// Group is the agent's address group (see AddrGroup), which its
	// entry is charged to.
	Group string
}

// Agent is what the server stores for a connected agent: comparable, so
// that a registry tells a holder from the one that replaced it, and
// saying when its latest token was signed (zero before its first), which
// a replica claims its agents' IDs back with after Redis lost its data.
type Agent interface {
	comparable
	Issued() time.Time
}

// Registry maps rendezvous IDs to connected agents, and keeps the ID of an
// agent whose link dropped reserved for it for a grace period.
// Implementations are safe for concurrent use.
//
// A registration has two steps. Register claims the ID before the
// WebSocket upgrade, so that refusals are plain HTTP answers; Confirm
// records that the agent completed its hello and got its welcome. Only a
// confirmed agent leaves a reservation when it goes: claims cost an
// attacker nothing, reservations cost a completed handshake.
//
// Who gets an ID is decided by tenures (see Tenure), which agents prove
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
//     restart, whoever asked first), or it proved a younger tenure that
//     began while this one could still hold the ID, its reservation
//     included; a younger tenure that began after the older one had
//     surely ended wins over it, whichever asks first (see endedBefore).
//     A tenure signed since the
//     epoch that no longer holds the ID ended here: its reservation
//     expired or an older tenure took the ID, and its token is no key.
type Registry[V Agent] interface {
	// Register makes a, claiming c, the holder of id, or refuses it. A
	// holder connected here that it takes the ID from is returned as old
	// (ok set), for the caller to close.
	//
	// Errors: ErrIDInUse and a *ReservedError (ErrIDReserved); a *LimitError when c's
	// address group, or the server, holds as many agents as allowed;
	// ErrUnavailable when a shared registry does not answer.
	Register(id string, c Claim, a V) (old V, ok bool, err error)
	// Confirm records that a, holding id, completed its hello and welcome:
	// from now on its ID stays reserved for it when it drops. A
	// reservation a took over is spent.
	Confirm(id string, a V)
	// Unregister removes a if it still holds id. A confirmed a leaves id
	// reserved for its tenure for the grace period. An unconfirmed a
	// leaves what it found: the reservation it took over, if it took one,
	// as it was; else nothing.
	Unregister(id string, a V)
	// Release removes a if it still holds id, and leaves id free at once,
	// whatever a took over: a said goodbye (it ended on purpose), so no
	// agent will come back for the ID.
	Release(id string, a V)
	// Route says where a client of id goes: to a (here set) held on this
	// server, to the replica at owner (its advertise URL) that holds it,
	// or nowhere (neither). err is ErrUnavailable when a shared registry
	// did not answer, after retrying for a bounded time, and no agent
	// here holds id: the client may be served by a retry.
	Route(ctx context.Context, id string) (a V, here bool, owner string, err error)
	// Lookup returns the agent holding id on this server, if one does
	// (as far as this server knows: it asks no shared registry).
	Lookup(id string) (a V, ok bool)
	// Agents returns the agents connected here ordered by ID.
	Agents() []V
}

// Limits bound what a registry holds.
type Limits struct {
	Grace       time.Duration // how long an ID stays reserved; <= 0: never
	PerAddr     int           // agents plus reservations charged to one address group; <= 0: unlimited
	MaxAgents   int           // agents connected here (welcomed or not) in all; <= 0: unlimited
	MaxReserved int           // reservations in all; <= 0: unlimited
}

// AddrGroup is the key per-address limits count by: an IPv4 address
// (IPv4-mapped IPv6 included) as itself, an IPv6 address by its /64,
// since one host or one customer's network commonly holds a whole /64. A
// string that is no IP address is its own group.
func AddrGroup(addr string) string {
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
