// Package loadgen runs thousands of synthetic agents in one process
// against a Converge server, to measure and test the server at scale.
// Each speaks the agent control protocol as agent/control.go does: the
// upgrade to wire.AgentPath, with the Converge-Agent-Secret header once
// welcomed; a hello with an Info of realistic size; one status; keepalive
// pings every wsconn.PingInterval, a missing pong ending the link; and
// reconnection with the agent's backoff and jitter, giving up only on a
// final refusal. A dial request is answered by dialling back and echoing
// the stream's bytes, so a client can check an agent is really reachable.
//
// It is not an agent: there is no SSH server, so thousands fit in one
// process. It is test and benchmark tooling (internal/test/bench), not a
// product command.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// The agent's reconnect schedule (see wire.ReconnectMin): the fleet
// reconnects as agents do.
const (
	DefaultBackoffMin      = wire.ReconnectMin
	DefaultBackoffMax      = wire.ReconnectMax
	DefaultReconnectSpread = wire.ReconnectSpread
)

// Config of a Fleet.
type Config struct {
	// Server is the server's base URL, ws://host:port. Required.
	Server string
	// Prefix names the agents: agent i has the ID Prefix-0000i (see
	// Fleet.ID). Default "load".
	Prefix string
	// LocalAddrs are the source addresses agents dial from, agent i from
	// LocalAddrs[i % len], so that per-address limits count them as agents
	// on that many hosts (on Linux any of 127.0.0.0/8 works on loopback).
	// Default none: the system chooses, one address for all.
	LocalAddrs []netip.Addr
	// BackoffMin and BackoffMax bound the reconnect backoff. Default
	// DefaultBackoffMin and DefaultBackoffMax, the agent's.
	BackoffMin, BackoffMax time.Duration
	// ReconnectSpread spreads the first attempt after a welcomed link
	// ended evenly over [0, ReconnectSpread]. Default
	// DefaultReconnectSpread, the agent's.
	ReconnectSpread time.Duration
	// IDTokens, when set, are identity tokens for a server with a
	// registration policy: agent i presents IDTokens[i % len] on every
	// connection (wire.IDTokenHeader), as an agent given
	// CONVERGE_ID_TOKEN does. Default none.
	IDTokens []string
	// Logger receives each agent's failures at debug level. Default: none.
	Logger *slog.Logger
}

// Stats counts what the fleet's agents did.
type Stats struct {
	Agents    int    // agents started
	Connected int    // agents registered now: welcomed, link up
	Back      int    // agents welcomed at least once since the last Mark
	Welcomes  int64  // registrations, reconnections included
	Attempts  int64  // control connections tried
	Failures  int64  // attempts that ended before a welcome: refused, unreachable, timed out
	GaveUp    int    // agents that stopped on a final refusal
	Streams   int64  // dial requests answered with a stream
	LastError string // the latest failure, for messages
}

// Fleet is a set of synthetic agents. Create it with Start, grow it with
// Add, end it with Stop.
type Fleet struct {
	cfg     Config
	clients []*http.Client // one per source address
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // agent loops and their streams

	mu      sync.Mutex
	stats   Stats
	epoch   int           // of the last Mark
	mark    time.Time     // of the last Mark
	back    []Return      // of each agent's first welcome since the mark
	changed chan struct{} // closed and replaced at every change of stats
}

// Start returns a fleet of no agents yet for cfg; Add starts them. Stop
// ends it.
func Start(cfg Config) (*Fleet, error) {
	if _, err := wsconn.ParseURL(cfg.Server); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "load"
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.ReconnectSpread <= 0 {
		cfg.ReconnectSpread = DefaultReconnectSpread
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		return nil, fmt.Errorf("backoff maximum %v is below its minimum %v", cfg.BackoffMax, cfg.BackoffMin)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger.With("component", "loadgen"), epoch: 1, mark: time.Now(), changed: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	locals := cfg.LocalAddrs
	if len(locals) == 0 {
		locals = []netip.Addr{{}}
	}
	for _, a := range locals {
		f.clients = append(f.clients, newClient(a))
	}
	return f, nil
}

// newClient dials from local (the zero Addr: the system's choice), with
// no proxy: the fleet aims at the server itself.
func newClient(local netip.Addr) *http.Client {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	if local.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 4}}
}

// Add starts n more agents. It fails, starting none, when this process
// may not open enough file descriptors for them (see cli.RaiseFileLimit).
func (f *Fleet) Add(n int) error {
	limit, _ := cli.RaiseFileLimit()
	var first int
	var err error
	f.update(func(s *Stats) {
		first = s.Agents
		// A control connection each, and headroom.
		if need := uint64(first + n + 256); limit > 0 && limit < need {
			err = fmt.Errorf("%d agents need about %d file descriptors and this process may open %d: raise the limit (ulimit -n)", first+n, need, limit)
			return
		}
		s.Agents += n
	})
	if err != nil {
		return err
	}
	for i := first; i < first+n; i++ {
		a := &agent{f: f, id: f.ID(i), n: i, client: f.clients[i%len(f.clients)]}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			a.run(f.ctx)
		}()
	}
	return nil
}

// ID is the rendezvous ID of agent i.
func (f *Fleet) ID(i int) string { return ID(f.cfg.Prefix, i) }

// ID is the rendezvous ID of agent i of a fleet whose Config.Prefix is
// prefix.
func ID(prefix string, i int) string { return fmt.Sprintf("%s-%05d", prefix, i) }

// Stop ends every agent, closing its connections, and waits for them.
func (f *Fleet) Stop() {
	f.cancel()
	f.wg.Wait()
	for _, c := range f.clients {
		c.CloseIdleConnections()
	}
}

// Stats returns the counts now.
func (f *Fleet) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Mark starts a new count of agents coming back (Stats.Back, Back) and
// returns its time: call it when the server goes away.
func (f *Fleet) Mark() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.epoch++
	f.mark = time.Now()
	f.back = nil
	f.stats.Back = 0
	return f.mark
}

// Return is how an agent came back after a Mark: when it started the
// attempt that got it in and when it was welcomed, both from the Mark.
// How far apart the attempts are is what the backoff and jitter did; how
// far apart the welcomes, what the server could take.
type Return struct {
	Dialled, Welcomed time.Duration
}

// Back returns how each agent welcomed since the last Mark first came
// back, in the order they did.
func (f *Fleet) Back() []Return {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Return(nil), f.back...)
}

// Wait blocks until ok holds for the fleet's Stats, checked at every
// change, or until ctx ends, returning its error and the last Stats.
func (f *Fleet) Wait(ctx context.Context, ok func(Stats) bool) (Stats, error) {
	for {
		f.mu.Lock()
		s, changed := f.stats, f.changed
		f.mu.Unlock()
		if ok(s) {
			return s, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return s, fmt.Errorf("waiting for the fleet (%d agents, %d connected, %d back; last error: %s): %w",
				s.Agents, s.Connected, s.Back, s.LastError, ctx.Err())
		}
	}
}

// update changes the stats under the lock and wakes Wait.
func (f *Fleet) update(change func(*Stats)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.stats)
	close(f.changed)
	f.changed = make(chan struct{})
}

// welcomed records an agent's registration by an attempt started at
// dialled; epoch is the Mark the agent was last counted back in, which it
// returns updated.
func (f *Fleet) welcomed(epoch int, dialled time.Time) int {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Connected++
	f.stats.Welcomes++
	if epoch != f.epoch {
		epoch = f.epoch
		f.back = append(f.back, Return{Dialled: dialled.Sub(f.mark), Welcomed: now.Sub(f.mark)})
		f.stats.Back++
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return epoch
}

// failed records an attempt that ended before a welcome.
func (f *Fleet) failed(id string, err error, final bool) {
	f.log.Debug("agent attempt failed", "id", id, "error", err, "final", final)
	f.update(func(s *Stats) {
		s.Failures++
		s.LastError = err.Error()
		if final {
			s.GaveUp++
		}
	})
}

// finalRefusal reports whether an agent stops on err, as the agent's
// finalRefusal does: the server answered 4xx other than 429.
func finalRefusal(err error) bool {
	var re *wsconn.RefusedError
	return errors.As(err, &re) && re.Status >= 400 && re.Status < 500 && re.Status != http.StatusTooManyRequests
}
