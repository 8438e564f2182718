package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/server/internal/registry"
	"github.com/converge-ci/converge/templates"
)

// cluster is what a replica adds to the server when it shares a Redis
// with others (Config.Redis): the shared registry (redis.go), forwarding
// of clients and streams to the replica that holds their agent
// (forward.go), and the sessions view of every replica's agents.
type cluster struct {
	s    *Server
	log  *slog.Logger
	rdb  *redis.Client
	reg  *registry.Redis[*agentConn]
	self string // this replica's advertise URL, ws:// or wss://

	kick   chan struct{} // local changes to publish; capacity 1
	resync chan struct{} // refresh now (Redis reconnected, or failed over); capacity 1
	// refresh is reg.Refresh (a test's own in refreshLoop's tests).
	refresh func() (epoch int64, changed bool, err error)

	seen   seenMACs     // forwarded requests' signatures accepted (forward.go)
	lastMS atomic.Int64 // the last time a forwarded request was signed with (signMS)

	mu        sync.Mutex
	published map[string]string // ID -> the sessions row last written for it
	view      []templates.Session
	viewAt    time.Time
}

// refreshRetry is how soon a failed lease refresh is tried again: a
// lease (three refreshes) outlasts many tries.
const refreshRetry = time.Second

// DefaultClusterDrainDelay is Config.DrainDelay's default with Redis:
// long enough for a load balancer checking /healthz every 2 s to see two
// failures.
const DefaultClusterDrainDelay = 5 * time.Second

// validateCluster checks the Config fields of a replica.
func (c *Config) validateCluster() error {
	sentinel := len(c.RedisSentinels) > 0 || c.RedisMaster != ""
	switch {
	case sentinel && c.Redis != "":
		return errors.New("--redis and --redis-sentinel both name the Redis to share: give --redis for one Redis, or --redis-sentinel with --redis-master for one that Sentinels fail over")
	case sentinel:
		if err := c.sentinel().Validate(); err != nil {
			return err
		}
	}
	if c.Redis == "" && !sentinel {
		if c.Advertise != "" {
			return errors.New("--advertise is for replicas sharing a registry: give --redis too")
		}
		c.DrainDelay = max(c.DrainDelay, 0)
		return nil
	}
	if c.Advertise == "" {
		return errors.New("--redis (or --redis-sentinel) needs --advertise: the URL other replicas reach this one by, as http://HOST:PORT")
	}
	if _, err := advertiseURL(c.Advertise); err != nil {
		return err
	}
	if c.ClusterKey == "" {
		return errors.New("--redis (or --redis-sentinel) needs CONVERGE_CLUSTER_KEY, the same on every replica, so that each checks the secrets the others signed (make one with `openssl rand -hex 32`)")
	}
	if c.DrainDelay == 0 {
		c.DrainDelay = DefaultClusterDrainDelay
	}
	c.DrainDelay = max(c.DrainDelay, 0)
	return nil
}

// sentinel is the Sentinel settings of c.
func (c *Config) sentinel() registry.Sentinel {
	return registry.Sentinel{Addrs: c.RedisSentinels, Master: c.RedisMaster, Password: c.RedisSentinelPassword}
}

// setupCluster connects a replica to its Redis; a single server has
// nothing to set up.
func (s *Server) setupCluster() error {
	if s.cfg.Redis == "" && len(s.cfg.RedisSentinels) == 0 {
		return nil
	}
	self, err := advertiseURL(s.cfg.Advertise)
	if err != nil {
		return err
	}
	registry.ClientLog(s.cfg.Logger.With("component", "redis"))
	// A new master may have missed the last writes: refresh at once.
	resync := make(chan struct{}, 1)
	watch := &registry.Watch{OnFailover: func(from, to string) {
		s.log.Warn("Redis failed over: following the new master", "from", from, "to", to)
		select {
		case resync <- struct{}{}:
		default:
		}
	}}
	var rdb *redis.Client
	if s.cfg.Redis != "" {
		rdb, err = registry.Open(context.Background(), s.cfg.Redis, watch)
	} else {
		rdb, err = registry.OpenSentinel(context.Background(), s.cfg.sentinel(), watch)
	}
	if err != nil {
		return err
	}
	s.metrics.watchRedis(watch)
	s.cluster = newCluster(s, rdb, self)
	s.cluster.resync = resync
	s.reg, s.peers = s.cluster.reg, s.cluster
	s.changes.local = s.cluster.changed
	return nil
}

// start runs the replica's part of the cluster, for a server listening
// on addr, until the returned function is called; that waits for it and
// closes the Redis client.
func (c *cluster) start(addr net.Addr) (stop func()) {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		c.self = withPort(c.self, strconv.Itoa(tcp.Port))
	}
	c.log = c.s.log.With("replica", c.self)
	c.reg.Listening(c.self, c.log)
	where := c.rdb.Options().Addr // "FailoverClient" with Sentinels: say theirs
	if sn := c.s.cfg.sentinel(); len(sn.Addrs) > 0 {
		where = "sentinels " + strings.Join(sn.Addrs, ",") + " master " + sn.Name()
	}
	c.log.Info("replica of a cluster", "redis", where, "db", c.rdb.Options().DB, "drain_delay", c.s.cfg.DrainDelay)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx) }()
	return func() {
		cancel()
		<-done
		c.rdb.Close()
	}
}

// drainDelay is the first step of a shutdown, once /healthz answers 503:
// it waits DrainDelay for load balancers to notice, then a replica
// releases its agents (close 1001) so that they register again at once,
// elsewhere; their streams here stay until the drain closes them.
func (s *Server) drainDelay() {
	if d := s.cfg.DrainDelay; d > 0 {
		s.log.Info("draining: /healthz answers 503 before agents are released", "delay", d)
		t := time.NewTimer(d)
		<-t.C
	}
	if s.cluster == nil {
		return
	}
	var wg sync.WaitGroup
	n := 0
	for _, a := range s.reg.Agents() {
		if !a.ready.Load() {
			continue
		}
		n++
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.close(websocket.StatusGoingAway, "server shutting down; reconnect shortly")
		}()
	}
	wg.Wait()
	s.log.Info("agents released to other replicas", "agents", n)
}

// viewMaxAge is how long a read of the other replicas' sessions serves
// every watcher of the sessions view, unless another replica says its
// sessions changed.
const viewMaxAge = 250 * time.Millisecond

// advertiseURL checks and normalises --advertise: http(s) or ws(s), a
// host, maybe a path (a server under a sub-path); no query, no user.
// It returns the ws:// or wss:// form, without a trailing slash.
func advertiseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("--advertise %q: %w", raw, err)
	}
	switch u.Scheme = wire.WebSocketScheme(u.Scheme); u.Scheme {
	case "ws", "wss":
	default:
		return "", fmt.Errorf("--advertise %q: give the URL other replicas reach this one by, as http://HOST:PORT (or https, ws, wss)", raw)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(raw, " \t\n") {
		return "", fmt.Errorf("--advertise %q: want scheme://HOST:PORT[/PATH] and nothing else", raw)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// withPort replaces port 0 in advertise (ws://HOST:0) with port: a
// replica listening on port 0 (tests) advertises the port it got.
func withPort(advertise string, port string) string {
	u, err := url.Parse(advertise)
	if err != nil || u.Port() != "0" {
		return advertise
	}
	u.Host = strings.TrimSuffix(u.Host, ":0") + ":" + port
	return u.String()
}

func newCluster(s *Server, rdb *redis.Client, self string) *cluster {
	log := s.log.With("replica", self)
	c := &cluster{s: s, log: log, rdb: rdb, self: self, kick: make(chan struct{}, 1), resync: make(chan struct{}, 1), published: make(map[string]string)}
	c.reg = registry.NewRedis[*agentConn](rdb, self, s.tokens.Key(), s.cfg.registryLimits(), nil, log)
	c.refresh = c.reg.Refresh
	c.reg.OnLost(c.closeLost)
	c.reg.OnFenced(c.release)
	return c
}

// release closes a, an agent here whose lease may have ended while this
// replica could not reach Redis, with 1001: it registers again, with its
// token, on a replica that can, before another agent may take its ID.
func (c *cluster) release(a *agentConn) {
	if !a.ready.Load() {
		a.displace("this server lost its registry; reconnect")
		return
	}
	go a.close(websocket.StatusGoingAway, "this server lost its registry; reconnect shortly")
}

// closeLost closes a, an agent here whose ID another replica's agent
// took, as a displaced holder is closed.
func (c *cluster) closeLost(a *agentConn) {
	c.log.Warn("agent lost its ID to an agent on another replica; closing it", "id", a.id, "remote", a.remote)
	a.displace("replaced by another connection for this ID, on another server")
}

// run keeps the replica's part of the cluster going until ctx ends:
// lease refreshes, events from other replicas, publishing this
// replica's sessions.
func (c *cluster) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); c.refreshLoop(ctx, c.resync) }()
	go func() { defer wg.Done(); c.listen(ctx, c.resync) }()
	go func() { defer wg.Done(); c.publishLoop(ctx) }()
	wg.Wait()
}

// refreshLoop refreshes the leases every registry.LeaseRefresh, and at once when
// the event subscription (re)connects, as it does after Redis restarts,
// or the master changes. A refresh that fails is tried again every
// refreshRetry, so that a few seconds without a master (a failover)
// cost no lease.
func (c *cluster) refreshLoop(ctx context.Context, resync <-chan struct{}) {
	t := time.NewTicker(registry.LeaseRefresh)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-resync:
		}
		_, changed, err := c.refresh()
		switch {
		case err != nil && !failing:
			c.log.Warn("cannot refresh agents' leases; local agents keep working, other replicas cannot find them; retrying", "error", err)
			t.Reset(refreshRetry)
		case err == nil && failing:
			c.log.Info("registry reachable again")
			t.Reset(registry.LeaseRefresh)
		}
		failing = err != nil
		if changed {
			c.log.Warn("Redis lost its data (new epoch); this replica's agents are registered again")
			c.mu.Lock()
			clear(c.published)
			c.mu.Unlock()
			c.changed()
		}
	}
}

// listen handles events from other replicas: an agent here lost its ID,
// or the sessions view changed.
func (c *cluster) listen(ctx context.Context, resync chan<- struct{}) {
	ps := c.rdb.Subscribe(ctx, registry.Events)
	defer ps.Close()
	defer context.AfterFunc(ctx, func() { ps.Close() })() // Receive does not watch ctx
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			t := time.NewTimer(time.Second) // go-redis reconnects on the next Receive
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			select {
			case resync <- struct{}{}:
			default:
			}
			c.othersChanged()
		case *redis.Message:
			c.event(m.Payload)
		}
	}
}

func (c *cluster) event(payload string) {
	if c.reg.Event(payload) {
		return
	}
	if f := strings.Split(payload, "\t"); len(f) == 2 && f[0] == "changed" && f[1] != c.self {
		c.othersChanged()
	}
}

// othersChanged makes the next read of the other replicas' sessions go
// to Redis, and tells the watchers.
func (c *cluster) othersChanged() {
	c.mu.Lock()
	c.viewAt = time.Time{}
	c.mu.Unlock()
	c.s.changes.notifyWatchers()
}

// changed asks the publisher to write this replica's sessions.
func (c *cluster) changed() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// publishLoop writes this replica's changed sessions rows to Redis and
// tells the other replicas, at most every eventMinInterval.
func (c *cluster) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		if err := c.publish(ctx); err != nil {
			c.log.Debug("cannot publish sessions", "error", err)
		}
		t := time.NewTimer(eventMinInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (c *cluster) publish(ctx context.Context) error {
	rows := make(map[string]registry.Row)
	for _, v := range c.s.localSessions() {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		row, ok, err := c.reg.Row(v.ID, b)
		if err != nil {
			return err
		}
		if ok {
			rows[v.ID] = row
		}
	}
	c.mu.Lock()
	var set []registry.Row
	for id, row := range rows {
		if c.published[id] != row.JSON {
			set = append(set, row)
		}
	}
	var gone []string
	for id := range c.published {
		if _, ok := rows[id]; !ok {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	// Rows of agents that left are removed by the registry script with
	// their entries, and rows are written only for holders.
	if err := c.reg.WriteRows(set); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, registry.Timeout)
	defer cancel()
	if err := c.rdb.Publish(ctx, registry.Events, "changed\t"+c.self).Err(); err != nil {
		return err
	}
	c.mu.Lock()
	for id, row := range rows {
		c.published[id] = row.JSON
	}
	for _, id := range gone {
		delete(c.published, id)
	}
	c.mu.Unlock()
	return nil
}

// remoteSessions are the other replicas' agents, for the sessions view:
// rows whose holder still holds its ID, read at most every viewMaxAge.
func (c *cluster) remoteSessions(ctx context.Context) []templates.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.viewAt) < viewMaxAge {
		return c.view
	}
	rows, err := c.reg.OtherRows(ctx)
	if err != nil {
		c.log.Warn("cannot read the other replicas' sessions", "error", err)
		return c.view
	}
	var out []templates.Session
	for _, raw := range rows {
		var v templates.Session
		if json.Unmarshal(raw, &v) == nil {
			out = append(out, v)
		}
	}
	c.view, c.viewAt = out, time.Now()
	return out
}
