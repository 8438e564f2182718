package server

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/converge-ci/converge/internal/wire"
)

// The cluster registry keeps, in Redis, which replica holds each ID and
// with which connection, the reservations and the address charges, and
// decides claims with the memRegistry's rules in one Lua script
// (registry.lua), so that replicas racing for an ID are decided
// atomically. The agents connected to this replica stay in its memory.
//
// A holder's entry has a lease its replica refreshes every leaseRefresh;
// a replica that dies stops refreshing, and when the lease ends its
// agents count as dropped then (confirmed ones leave reservations). A
// refresh is fenced by the connection token: a replica whose agent lost
// the ID (another took it) learns it there, or sooner from a "lost"
// event, and closes its agent. A Redis that lost its data is refilled by
// the next refresh: each replica claims its agents' IDs again as the
// agents would, with their latest tokens, under the epoch the empty
// Redis started.
//
// Redis keys (standalone Redis or Valkey; not Redis Cluster):
const (
	redisKeyIDs      = "converge:ids"
	redisKeyLeases   = "converge:leases"
	redisKeyRes      = "converge:reservations"
	redisKeyCharged  = "converge:charged"
	redisKeyEpoch    = "converge:epoch"
	redisKeySessions = "converge:sessions"
	// redisEvents is the channel replicas tell each other on: "lost
	// OWNER CONN ID" (an agent lost its ID), "changed REPLICA" (the
	// sessions view should refresh).
	redisEvents = "converge:events"
)

var redisKeys = []string{redisKeyIDs, redisKeyLeases, redisKeyRes, redisKeyCharged, redisKeyEpoch, redisKeySessions}

// Lease timing: a replica refreshes its agents' leases every
// leaseRefresh; a lease lasts three refreshes, so one slow or lost
// refresh costs nothing, and a dead replica's agents are free again
// (reserved) within leaseTime.
const (
	leaseRefresh = 5 * time.Second
	leaseTime    = 3 * leaseRefresh
	// redisTimeout bounds one registry operation.
	redisTimeout = 3 * time.Second
	// refreshBatch is the most agents one refresh script handles, so
	// that no script holds Redis for long.
	refreshBatch = 500
)

//go:embed registry.lua
var registryLua string

var registryScript = redis.NewScript(registryLua)

// errRegistryUnavailable: Redis did not answer; agents retry.
var errRegistryUnavailable = errors.New("the registry (Redis) is unavailable")

// openRedis connects to the Redis at rawURL (redis://, rediss://,
// unix://) and checks that it answers.
func openRedis(ctx context.Context, rawURL string) (*redis.Client, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("--redis: %w (want redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS, or unix:///PATH)", err)
	}
	opt.Protocol = 2           // RESP2: what every Redis and Valkey speaks
	opt.DisableIdentity = true // no CLIENT SETINFO: older servers refuse it
	rdb := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis at %s does not answer: %w", opt.Addr, err)
	}
	return rdb, nil
}

// redisRegistry is the Registry of one replica in a cluster.
type redisRegistry struct {
	rdb    *redis.Client
	self   string // this replica's advertise URL: the owner it records
	limits registryLimits
	now    func() time.Time
	log    *slog.Logger
	// lost is called, without locks held, for a local agent whose ID
	// another replica's agent took; it closes it.
	lost func(*agentConn)

	// stripes order the registrations and unregistrations of one ID on
	// this replica: the script's decision and the local record of it are
	// one step (striped by ID, so that IDs do not wait for each other).
	stripes [64]sync.Mutex

	mu      sync.Mutex
	local   map[string]*holding // the agents this replica holds, by ID
	joining int                 // registrations of agents new here in flight
	epoch   int64               // Redis's epoch as last seen by a refresh
}

// holding is one agent this replica holds.
type holding struct {
	a         *agentConn
	conn      string // fence token: this registration's, in Redis
	confirmed bool
}

func newRedisRegistry(rdb *redis.Client, self string, limits registryLimits, now func() time.Time, log *slog.Logger) *redisRegistry {
	return &redisRegistry{rdb: rdb, self: self, limits: limits, now: now, log: log, lost: func(*agentConn) {}, local: make(map[string]*holding)}
}

// run calls the registry script for op with its arguments.
func (r *redisRegistry) run(op string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), redisTimeout)
	defer cancel()
	argv := append([]any{op, r.now().UnixMilli(), r.limits.grace.Milliseconds(), r.limits.perAddr,
		r.limits.maxReserved, leaseTime.Milliseconds(), r.self, redisEvents}, args...)
	v, err := registryScript.Run(ctx, r.rdb, redisKeys, argv...).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errRegistryUnavailable, op, err)
	}
	return v, nil
}

func claimArgs(c claim) []any {
	return []any{c.tenure.since, c.tenure.nonce, boolInt(c.proven), c.issued}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// stripe is the lock that orders id's changes on this replica.
func (r *redisRegistry) stripe(id string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &r.stripes[h.Sum32()%uint32(len(r.stripes))]
}

func (r *redisRegistry) Register(id string, c claim, a *agentConn) (*agentConn, error) {
	st := r.stripe(id)
	st.Lock()
	defer st.Unlock()
	r.mu.Lock()
	if max := r.limits.maxAgents; max > 0 && r.local[id] == nil && len(r.local)+r.joining >= max {
		r.mu.Unlock()
		return nil, &limitError{what: "agents", reason: reasonServerFull, limit: max}
	}
	r.joining++
	r.mu.Unlock()
	defer func() { r.mu.Lock(); r.joining--; r.mu.Unlock() }()

	conn := wire.NewToken()
	group := addrGroup(a.remote)
	v, err := r.run("register", append([]any{id, conn, group}, claimArgs(c)...)...)
	if err != nil {
		return nil, err
	}
	res, _ := v.([]any)
	status, _ := at(res, 0).(string)
	switch status {
	case "in_use":
		return nil, ErrIDInUse
	case "reserved":
		return nil, ErrIDReserved
	case "limit":
		return nil, &limitError{what: "agents", reason: reasonAgentLimit, addr: group, limit: r.limits.perAddr, reserved: r.limits.grace > 0}
	case "ok":
	default:
		return nil, fmt.Errorf("%w: register answered %v", errRegistryUnavailable, v)
	}
	oldOwner, _ := at(res, 1).(string)
	oldConn, _ := at(res, 2).(string)
	r.mu.Lock()
	defer r.mu.Unlock()
	var old *agentConn
	if h := r.local[id]; h != nil && oldOwner == r.self && h.conn == oldConn {
		old = h.a
	}
	r.local[id] = &holding{a: a, conn: conn}
	return old, nil
}

func at(list []any, i int) any {
	if i < len(list) {
		return list[i]
	}
	return nil
}

// holder returns id's local holding if a holds it; r.mu is not held.
func (r *redisRegistry) holder(id string, a *agentConn) *holding {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.local[id]; h != nil && h.a == a {
		return h
	}
	return nil
}

func (r *redisRegistry) Confirm(id string, a *agentConn) {
	h := r.holder(id, a)
	if h == nil {
		return
	}
	r.mu.Lock()
	h.confirmed = true
	r.mu.Unlock()
	v, err := r.run("confirm", id, h.conn)
	if err != nil {
		r.log.Warn("cannot record the agent's welcome; the next refresh will", "id", id, "error", err)
		return
	}
	if n, _ := v.(int64); n == 0 {
		r.log.Info("agent lost its ID before its welcome was recorded", "id", id)
		r.lose(id, h.conn)
	}
}

func (r *redisRegistry) Unregister(id string, a *agentConn) {
	st := r.stripe(id)
	st.Lock()
	defer st.Unlock()
	h := r.holder(id, a)
	if h == nil {
		return
	}
	r.mu.Lock()
	delete(r.local, id)
	r.mu.Unlock()
	if _, err := r.run("unregister", id, h.conn); err != nil {
		r.log.Warn("cannot record that the agent left; its lease ends by itself", "id", id, "lease", leaseTime, "error", err)
	}
}

func (r *redisRegistry) Lookup(id string) *agentConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.local[id]; h != nil {
		return h.a
	}
	return nil
}

func (r *redisRegistry) Agents() []*agentConn {
	r.mu.Lock()
	list := make([]*agentConn, 0, len(r.local))
	for _, h := range r.local {
		list = append(list, h.a)
	}
	r.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].id < list[j].id })
	return list
}

// lose forgets the local holder of id if it is still the one with conn,
// and has it closed.
func (r *redisRegistry) lose(id, conn string) {
	r.mu.Lock()
	h := r.local[id]
	if h == nil || h.conn != conn {
		r.mu.Unlock()
		return
	}
	delete(r.local, id)
	r.mu.Unlock()
	r.log.Warn("agent lost its ID to an agent on another replica; closing it", "id", id, "remote", h.a.remote)
	r.lost(h.a)
}

// regEntry is an entry of redisKeyIDs as Go reads it (see registry.lua).
type regEntry struct {
	Owner string  `json:"o"`
	Conn  string  `json:"c"`
	Lease float64 `json:"l"` // Unix ms
}

// owner returns the replica holding id now, and its connection token:
// "" when no agent holds it (or Redis does not answer: err).
func (r *redisRegistry) owner(ctx context.Context, id string) (owner, conn string, err error) {
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	v, err := r.rdb.HGet(ctx, redisKeyIDs, id).Result()
	if errors.Is(err, redis.Nil) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("%w: %w", errRegistryUnavailable, err)
	}
	var e regEntry
	if err := json.Unmarshal([]byte(v), &e); err != nil {
		return "", "", fmt.Errorf("registry entry of %q: %w", id, err)
	}
	if e.Owner == "" || int64(e.Lease) <= r.now().UnixMilli() {
		return "", "", nil
	}
	return e.Owner, e.Conn, nil
}

// route says where a client of id goes: to a local agent, to the
// replica that holds it (owner), or nowhere. Redis decides; when it says
// nothing (it restarted empty and is being refilled, or does not
// answer), a local agent is served.
func (r *redisRegistry) route(ctx context.Context, id string) (local *agentConn, owner string) {
	o, conn, err := r.owner(ctx, id)
	if err != nil {
		r.log.Debug("registry lookup failed; serving local agents only", "id", id, "error", err) // the refresh loop warns once
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.local[id]
	switch {
	case o == "":
		if h != nil {
			return h.a, ""
		}
		return nil, ""
	case o == r.self:
		if h != nil && h.conn == conn {
			return h.a, ""
		}
		return nil, "" // a holder that registered here and is gone
	default:
		return nil, o
	}
}

type refreshItem struct {
	id   string
	conn string
	args []any
}

// forgetGone unregisters again the items no longer held here when their
// refresh ended (a "lost" event came meanwhile): the refresh may have
// claimed their IDs back.
func (r *redisRegistry) forgetGone(items []refreshItem) {
	for _, it := range items {
		r.mu.Lock()
		h := r.local[it.id]
		gone := h == nil || h.conn != it.conn
		r.mu.Unlock()
		if gone {
			if _, err := r.run("unregister", it.id, it.conn); err != nil {
				r.log.Warn("cannot record that the agent left; its lease ends by itself", "id", it.id, "error", err)
			}
		}
	}
}

// refresh extends the leases of this replica's agents, reclaims those
// whose entries Redis lost, and closes the agents that lost their IDs.
// It returns Redis's epoch, and whether it changed since the last
// refresh (Redis lost its data).
func (r *redisRegistry) refresh() (epoch int64, changed bool, err error) {
	// No registration or unregistration here interleaves with a refresh:
	// what it sends is what the replica holds while it runs.
	for i := range r.stripes {
		r.stripes[i].Lock()
		defer r.stripes[i].Unlock()
	}
	r.mu.Lock()
	items := make([]refreshItem, 0, len(r.local))
	for id, h := range r.local {
		a := h.a
		issued := a.issued.Load()
		items = append(items, refreshItem{id, h.conn, []any{id, h.conn, addrGroup(a.remote), a.tenure.since, a.tenure.nonce,
			boolInt(h.confirmed), unixSeconds(time.Unix(0, issued))}})
	}
	r.mu.Unlock()
	for start := 0; start == 0 || start < len(items); start += refreshBatch {
		batch := items[start:min(start+refreshBatch, len(items))]
		var args []any
		for _, it := range batch {
			args = append(args, it.args...)
		}
		v, err := r.run("refresh", args...)
		if err != nil {
			return 0, false, err
		}
		res, _ := v.([]any)
		s, _ := at(res, 0).(string)
		epoch, _ = strconv.ParseInt(s, 10, 64)
		lost := make(map[string]bool)
		for _, x := range res[min(1, len(res)):] {
			if id, ok := x.(string); ok {
				lost[id] = true
			}
		}
		for _, it := range batch {
			if lost[it.id] {
				r.lose(it.id, it.conn)
			}
		}
		r.forgetGone(batch)
	}
	r.mu.Lock()
	changed = r.epoch != 0 && r.epoch != epoch
	r.epoch = epoch
	r.mu.Unlock()
	return epoch, changed, nil
}
