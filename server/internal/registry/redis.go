package registry

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The cluster registry keeps, in Redis, which replica holds each ID and
// with which connection, the reservations and the address charges, and
// decides claims with the Memory's rules in one Lua script
// (registry.lua), so that replicas racing for an ID are decided
// atomically. The agents connected to this replica stay in its memory.
//
// A holder's entry has a lease its replica refreshes every LeaseRefresh;
// a replica that dies stops refreshing, and when the lease ends its
// agents count as dropped then (confirmed ones leave reservations). A
// refresh is fenced by the connection token: a replica whose agent lost
// the ID (another took it) learns it there, or sooner from a "lost"
// event, and closes its agent. A Redis that lost its data is refilled by
// the next refresh: each replica claims its agents' IDs again as the
// agents would, with their latest tokens, under the epoch the empty
// Redis started.
//
// Leases and reservations run on Redis's clock (TIME in the script), so
// that replicas whose clocks differ agree on when they end. A replica
// that cannot refresh its leases for leaseTime (on its own clock) is
// fenced: other replicas may have given its agents' IDs away, so it
// stops routing clients to its agents and releases them (see OnFenced)
// to register again, with their tokens, where Redis is reachable.
//
// Whoever can write to Redis must not be able to send a replica
// anywhere: an entry's connection token carries a MAC, with the cluster
// key, of the ID, the owner and a nonce (see signConn), and an entry
// whose token does not verify is routed to nowhere. A "lost" event only
// makes a replica look at the entry; it closes its agent when a signed
// entry names another holder.
//
// Redis keys (standalone Redis or Valkey; not Redis Cluster):
const (
	redisKeyIDs      = "converge:ids"
	redisKeyLeases   = "converge:leases"
	redisKeyRes      = "converge:reservations"
	redisKeyCharged  = "converge:charged"
	redisKeyEpoch    = "converge:epoch"
	redisKeySessions = "converge:sessions"
	// Events is the channel replicas tell each other on: "lost OWNER
	// CONN ID" (an agent lost its ID; see Redis.Event), "changed
	// REPLICA" (the sessions view should refresh).
	Events = "converge:events"
)

var redisKeys = []string{redisKeyIDs, redisKeyLeases, redisKeyRes, redisKeyCharged, redisKeyEpoch, redisKeySessions}

// Lease timing: a replica refreshes its agents' leases every
// leaseRefresh; a lease lasts three refreshes, so one slow or lost
// refresh costs nothing, and a dead replica's agents are free again
// (reserved) within leaseTime.
const (
	LeaseRefresh = 5 * time.Second
	leaseTime    = 3 * LeaseRefresh
	// Timeout bounds one registry operation.
	Timeout = 3 * time.Second
	// refreshBatch is the most agents one refresh script handles, so
	// that no script holds Redis for long.
	refreshBatch = 500
)

//go:embed registry.lua
var registryLua string

var registryScript = redis.NewScript(registryLua)

// Open connects to the Redis at rawURL (redis://, rediss://,
// unix://), counting into w (if not nil) what goes wrong, and checks
// that it answers.
func Open(ctx context.Context, rawURL string, w *Watch) (*redis.Client, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("--redis: %w (want redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS, or unix:///PATH)", err)
	}
	opt.Protocol = 2           // RESP2: what every Redis and Valkey speaks
	opt.DisableIdentity = true // no CLIENT SETINFO: older servers refuse it
	rdb := redis.NewClient(opt)
	if w != nil {
		rdb.AddHook(w.hook())
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis at %s does not answer: %w", opt.Addr, err)
	}
	return rdb, nil
}

// Redis is the Registry of one replica in a cluster.
type Redis[V Agent] struct {
	rdb    *redis.Client
	key    []byte // the cluster key: signs connection tokens
	limits Limits
	// now is the clock the script decides by in tests; nil: Redis's.
	now func() time.Time
	// self and log are set before use (see Listening).
	self string // this replica's advertise URL: the owner it records
	log  *slog.Logger
	// lost is called, without locks held, for a local agent whose ID
	// another replica's agent took; it closes it. Set before use.
	lost func(V)
	// fenced is called, without locks held, for a local agent released
	// because its lease may have ended unseen (see Fence). Set before use.
	fenced func(V)

	// stripes order the registrations and unregistrations of one ID on
	// this replica: the script's decision and the local record of it are
	// one step (striped by ID, so that IDs do not wait for each other).
	stripes [64]sync.Mutex

	mu      sync.Mutex
	local   map[string]*holding[V] // the agents this replica holds, by ID
	joining int                    // registrations of agents new here in flight
	epoch   int64                  // Redis's epoch as last seen by a refresh
}

// holding is one agent this replica holds.
type holding[V Agent] struct {
	a         V
	claim     Claim  // it registered with
	conn      string // fence token: this registration's, in Redis
	confirmed bool
	// leased is when (this replica's monotonic clock) the last script
	// that set or extended its lease began: the lease in Redis ends
	// leaseTime after a moment no earlier than this.
	leased time.Time
}

// fencedAt reports whether h's lease may have ended by t.
func (h *holding[V]) fencedAt(t time.Time) bool { return t.Sub(h.leased) >= leaseTime }

// NewRedis returns the registry of the replica at self (its advertise
// URL, ws:// or wss://) on rdb, signing with the cluster key, with
// limits. now is nil but in tests: leases and reservations then run on
// Redis's clock.
func NewRedis[V Agent](rdb *redis.Client, self string, key []byte, limits Limits, now func() time.Time, log *slog.Logger) *Redis[V] {
	return &Redis[V]{rdb: rdb, key: key, self: self, limits: limits, now: now, log: log,
		lost: func(V) {}, fenced: func(V) {}, local: make(map[string]*holding[V])}
}

// OnFenced sets what releases a local agent whose lease may have ended
// unseen (close 1001, so that it registers again); it is called without
// locks held. Call it before use.
func (r *Redis[V]) OnFenced(f func(V)) { r.fenced = f }

// OnLost sets what closes a local agent whose ID an agent on another
// replica took; it is called without locks held. Call it before use.
func (r *Redis[V]) OnLost(f func(V)) { r.lost = f }

// Listening sets, before use, the advertise URL of a replica that listens
// now (port 0 resolved), and the log tagged with it.
func (r *Redis[V]) Listening(self string, log *slog.Logger) { r.self, r.log = self, log }

// run calls the registry script for op with its arguments.
func (r *Redis[V]) run(op string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	now := "" // the script reads Redis's clock
	if r.now != nil {
		now = strconv.FormatInt(r.now().UnixMilli(), 10)
	}
	argv := append([]any{op, now, r.limits.Grace.Milliseconds(), r.limits.PerAddr,
		r.limits.MaxReserved, leaseTime.Milliseconds(), r.self, Events}, args...)
	v, err := registryScript.Run(ctx, r.rdb, redisKeys, argv...).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
	}
	return v, nil
}

func claimArgs(c Claim) []any {
	return []any{c.Tenure.since, c.Tenure.nonce, boolInt(c.Proven), c.Issued}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// signConn is a fresh fence token for id held by owner: 12 random bytes,
// then the first 16 bytes of their MAC with id and owner (see connMAC),
// in hex.
func (r *Redis[V]) signConn(id, owner string) string {
	var b [12]byte
	rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	return nonce + r.connMAC(id, owner, nonce)
}

// signed reports whether conn is a fence token this cluster's key signed
// for id held by owner.
func (r *Redis[V]) signed(id, owner, conn string) bool {
	if len(conn) != 24+32 {
		return false
	}
	return hmac.Equal([]byte(conn[24:]), []byte(r.connMAC(id, owner, conn[:24])))
}

// connMAC is HMAC-SHA256(key, "converge-entry-v1" 0x00 id 0x00 owner
// 0x00 nonce), its first 16 bytes in hex.
func (r *Redis[V]) connMAC(id, owner, nonce string) string {
	m := hmac.New(sha256.New, r.key)
	for _, part := range []string{"converge-entry-v1", id, owner, nonce} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// stripe is the lock that orders id's changes on this replica.
func (r *Redis[V]) stripe(id string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &r.stripes[h.Sum32()%uint32(len(r.stripes))]
}

func (r *Redis[V]) Register(id string, c Claim, a V) (old V, ok bool, err error) {
	st := r.stripe(id)
	st.Lock()
	defer st.Unlock()
	r.mu.Lock()
	if max := r.limits.MaxAgents; max > 0 && r.local[id] == nil && len(r.local)+r.joining >= max {
		r.mu.Unlock()
		return old, false, &LimitError{What: "agents", Limit: max}
	}
	r.joining++
	r.mu.Unlock()
	defer func() { r.mu.Lock(); r.joining--; r.mu.Unlock() }()

	conn := r.signConn(id, r.self)
	var v any
	var start time.Time // of the try that answered: the lease runs from no earlier
	err = retry(context.Background(), func() (err error) {
		start = time.Now()
		v, err = r.run("register", append([]any{id, conn, c.Group}, claimArgs(c)...)...)
		return err
	})
	if err != nil {
		return old, false, err
	}
	res, _ := v.([]any)
	status, _ := at(res, 0).(string)
	switch status {
	case "in_use":
		return old, false, ErrIDInUse
	case "reserved":
		ms, _ := strconv.ParseInt(fmt.Sprint(at(res, 1)), 10, 64)
		return old, false, &ReservedError{Until: time.UnixMilli(ms)}
	case "limit":
		return old, false, &LimitError{What: "agents", Group: c.Group, Limit: r.limits.PerAddr, Reserved: r.limits.Grace > 0}
	case "ok":
	default:
		return old, false, fmt.Errorf("%w: register answered %v", ErrUnavailable, v)
	}
	oldOwner, _ := at(res, 1).(string)
	oldConn, _ := at(res, 2).(string)
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.local[id]; h != nil && oldOwner == r.self && h.conn == oldConn {
		old, ok = h.a, true
	}
	r.local[id] = &holding[V]{a: a, claim: c, conn: conn, leased: start}
	return old, ok, nil
}

func at(list []any, i int) any {
	if i < len(list) {
		return list[i]
	}
	return nil
}

// holds returns id's local holding, if any; r.mu is not held.
func (r *Redis[V]) holds(id string) *holding[V] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.local[id]
}

// holder returns id's local holding if a holds it; r.mu is not held.
func (r *Redis[V]) holder(id string, a V) *holding[V] {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.local[id]; h != nil && h.a == a {
		return h
	}
	return nil
}

func (r *Redis[V]) Confirm(id string, a V) {
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

func (r *Redis[V]) Unregister(id string, a V) { r.unregister("unregister", id, a) }

func (r *Redis[V]) Release(id string, a V) { r.unregister("release", id, a) }

// unregister runs op, unregister or release, for a holding id here.
func (r *Redis[V]) unregister(op, id string, a V) {
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
	if _, err := r.run(op, id, h.conn); err != nil {
		r.log.Warn("cannot record that the agent left; its lease ends by itself", "id", id, "lease", leaseTime, "error", err)
	}
}

func (r *Redis[V]) Lookup(id string) (a V, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.local[id]; h != nil {
		return h.a, true
	}
	return a, false
}

func (r *Redis[V]) Agents() []V {
	r.mu.Lock()
	type held struct {
		id string
		a  V
	}
	list := make([]held, 0, len(r.local))
	for id, h := range r.local {
		list = append(list, held{id, h.a})
	}
	r.mu.Unlock()
	return sortedByID(list, func(h held) (string, V) { return h.id, h.a })
}

// Event handles an event from another replica (on the Events channel)
// that concerns the registry, and reports whether it did: an agent here
// that lost its ID is forgotten and closed. Anyone who can publish on
// Redis can send an event, so it is only a hint: the agent is closed if
// a signed entry names another holder now.
func (r *Redis[V]) Event(payload string) bool {
	f := strings.Split(payload, "\t")
	if len(f) != 4 || f[0] != "lost" {
		return false
	}
	if f[1] != r.self || !r.signed(f[3], f[1], f[2]) {
		return true
	}
	owner, conn, err := r.owner(context.Background(), f[3])
	if err == nil && (owner != r.self || conn != f[2]) && owner != "" {
		r.lose(f[3], f[2])
	}
	return true
}

// lose forgets the local holder of id if it is still the one with conn,
// and has it closed.
func (r *Redis[V]) lose(id, conn string) {
	r.mu.Lock()
	h := r.local[id]
	if h == nil || h.conn != conn {
		r.mu.Unlock()
		return
	}
	delete(r.local, id)
	r.mu.Unlock()
	r.lost(h.a)
}

// regEntry is an entry of redisKeyIDs as Go reads it (see registry.lua).
type regEntry struct {
	Owner string  `json:"o"`
	Conn  string  `json:"c"`
	Lease float64 `json:"l"` // Unix ms, Redis's clock
}

// owner returns the replica holding id now, and its connection token:
// "" when no agent holds it, when the entry is not signed with the
// cluster key (someone else wrote it), or when Redis does not answer
// (err).
func (r *Redis[V]) owner(_ context.Context, id string) (owner, conn string, err error) {
	v, err := r.run("owner", id)
	if err != nil {
		return "", "", err
	}
	res, _ := v.([]any)
	owner, _ = at(res, 0).(string)
	conn, _ = at(res, 1).(string)
	if owner == "" {
		return "", "", nil
	}
	if !r.signed(id, owner, conn) {
		r.log.Warn("registry entry not signed with the cluster key: not routed to; has someone else written to Redis?", "id", id, "owner", owner)
		return "", "", nil
	}
	return owner, conn, nil
}

// Route says where a client of id goes: to a local agent, to the
// replica that holds it (owner), or nowhere. Redis decides; when it says
// nothing (it restarted empty and is being refilled, or does not
// answer), a local agent is served, unless it is fenced: its lease may
// have ended unseen, and another replica's agent may hold the ID. For an
// ID not held here, a Redis that does not answer is asked again for
// RetryWindow (it may be failing over), then err is ErrUnavailable.
func (r *Redis[V]) Route(ctx context.Context, id string) (a V, here bool, owner string, err error) {
	o, conn, err := r.owner(ctx, id)
	if err != nil && r.holds(id) == nil {
		// Not ours: a client a Redis failing over would send elsewhere
		// waits for it rather than getting a 404.
		err = retry(ctx, func() (err error) { o, conn, err = r.owner(ctx, id); return err })
	}
	if err != nil {
		r.log.Debug("registry lookup failed; serving local agents only", "id", id, "error", err) // the refresh loop warns once
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.local[id]
	if h != nil && h.fencedAt(now) {
		h = nil
	}
	switch {
	case o == "":
		if h != nil {
			return h.a, true, "", nil
		}
		return a, false, "", err // nowhere, or Redis did not say
	case o == r.self:
		if h != nil && h.conn == conn {
			return h.a, true, "", nil
		}
		return a, false, "", nil // a holder that registered here and is gone
	default:
		return a, false, o, nil
	}
}

// Fence releases the local agents whose leases may have ended unseen:
// the last refresh that reached Redis for them began leaseTime ago or
// more. Refresh calls it; so may anyone, at any time.
func (r *Redis[V]) Fence() {
	now := time.Now()
	var gone []V
	r.mu.Lock()
	for id, h := range r.local {
		if h.fencedAt(now) {
			delete(r.local, id)
			gone = append(gone, h.a)
		}
	}
	r.mu.Unlock()
	if len(gone) > 0 {
		r.log.Warn("registry unreachable for a whole lease: releasing this replica's agents to register elsewhere", "agents", len(gone), "lease", leaseTime)
	}
	for _, a := range gone {
		r.fenced(a)
	}
}

type refreshItem struct {
	id   string
	conn string
	args []any
}

// leased records that the leases of items, as far as still held here
// with the same connections, were extended by a script that began at
// start.
func (r *Redis[V]) leased(items []refreshItem, start time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, it := range items {
		if h := r.local[it.id]; h != nil && h.conn == it.conn {
			h.leased = start
		}
	}
}

// forgetGone unregisters again the items no longer held here when their
// refresh ended (a "lost" event came meanwhile): the refresh may have
// claimed their IDs back.
func (r *Redis[V]) forgetGone(items []refreshItem) {
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

// Refresh extends the leases of this replica's agents, reclaims those
// whose entries Redis lost, and closes the agents that lost their IDs.
// It returns Redis's epoch, and whether it changed since the last
// refresh (Redis lost its data).
func (r *Redis[V]) Refresh() (epoch int64, changed bool, err error) {
	// No registration or unregistration here interleaves with a refresh:
	// what it sends is what the replica holds while it runs.
	for i := range r.stripes {
		r.stripes[i].Lock()
		defer r.stripes[i].Unlock()
	}
	defer r.Fence()
	r.mu.Lock()
	items := make([]refreshItem, 0, len(r.local))
	for id, h := range r.local {
		var issued uint32 // of the agent's latest token; 0 before its first
		if t := h.a.Issued(); !t.IsZero() {
			issued = unixSeconds(t)
		}
		items = append(items, refreshItem{id, h.conn, []any{id, h.conn, h.claim.Group, h.claim.Tenure.since, h.claim.Tenure.nonce,
			boolInt(h.confirmed), issued}})
	}
	r.mu.Unlock()
	for start := 0; start == 0 || start < len(items); start += refreshBatch {
		batch := items[start:min(start+refreshBatch, len(items))]
		var args []any
		for _, it := range batch {
			args = append(args, it.args...)
		}
		start := time.Now()
		v, err := r.run("refresh", args...)
		if err != nil {
			return 0, false, err
		}
		r.leased(batch, start)
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
