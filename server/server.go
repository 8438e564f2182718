// Package server is the Converge rendezvous server: a registry of connected
// agents, the WebSocket endpoints agents and clients reach, the splice that
// joins them, and the web pages. Several servers can run as replicas of
// one service: their registry is then shared in Redis, and a replica
// forwards clients of agents another holds to it (cluster.go).
//
// It is a bit pipe. It never links an SSH library and never sees anything
// but the ciphertext of the SSH sessions it relays, plus what agents say
// about themselves.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server/internal/policy"
	"github.com/converge-ci/converge/server/internal/registry"
)

// Config of a Server. The zero value of each field is documented; Validate
// fills defaults.
type Config struct {
	// Addr to listen on when Listener is nil. Default DefaultAddr.
	Addr string
	// Listener, when set, is served instead of listening on Addr (tests).
	Listener net.Listener
	// SSHUser is the user name clients log in with; agents learn it at
	// registration. Default "converge".
	SSHUser string
	// StreamTimeout bounds how long a client waits for its agent to dial
	// back. Default 15s.
	StreamTimeout time.Duration
	// StreamPool is how many idle streams an agent that speaks control v2
	// keeps open for its next clients once one has connected (see
	// streamPool), so that a client is spliced at once instead of waiting
	// for a dial-back. Each costs a file descriptor and about 40 KiB while
	// idle (docs/benchmarks.md). At most MaxStreamPool. Default DefaultStreamPool; negative: no
	// pools, agents dial back for every client.
	StreamPool int
	// poolKeep is how long a pool stays full after its agent's last
	// client (tests shorten it). Default poolKeep.
	poolKeep time.Duration
	// registeringWait is how long an agent waits for a place among those
	// registering (MaxRegistering) before a 503 (tests shorten it).
	// Default registeringWait.
	registeringWait time.Duration
	// rawKeepalive is how long an idle raw stream of a pool may go
	// without a byte from the server (tests shorten it). Default
	// rawKeepalive.
	rawKeepalive time.Duration
	// Grace keeps the ID of an agent whose link dropped reserved for it;
	// only agents that completed their hello and welcome leave one.
	// Default DefaultGrace; negative disables.
	Grace time.Duration
	// MaxAgentsPerAddr bounds the agents connected from one remote address,
	// plus the IDs reserved for agents that were connected from it.
	// Default DefaultMaxAgentsPerAddr; negative: unlimited.
	MaxAgentsPerAddr int
	// MaxReservations bounds the IDs kept reserved, in all, for agents
	// whose link dropped; when full, a new reservation drops the oldest.
	// Default DefaultMaxReservations; negative: unlimited.
	MaxReservations int
	// MaxStreamsPerAddr bounds the client streams open from one remote
	// address. Default DefaultMaxStreamsPerAddr; negative: unlimited.
	//
	// Per-address limits count an IPv6 address by its /64.
	MaxStreamsPerAddr int
	// MaxAgents bounds the agents connected in all, registered or saying
	// hello; beyond it agents are refused with 503 and retry. Default
	// DefaultMaxAgents; negative: unlimited.
	MaxAgents int
	// AgentTokens and AgentTokenFile are shared registration tokens:
	// with either, agents must present one (see package policy for the
	// file's form). Default none.
	AgentTokens    []string
	AgentTokenFile string
	// OIDCIssuers are the CI identity issuers whose tokens admit agents
	// that satisfy one of the issuer's rules. With tokens too, either
	// admits. Default none: with no tokens either, any agent registers.
	OIDCIssuers []OIDCIssuer
	// OIDCAudience is the audience identity tokens must be minted for.
	// Default "": the server's URL as each agent's request names it
	// (https://host[/base-path], from X-Forwarded-* of trusted proxies),
	// which is the URL agents are given.
	OIDCAudience string
	// MaxAgentsPerRepo bounds the agents connected at once for one
	// repository, as verified from an identity token (counted in Redis
	// across replicas). Default 0: unlimited.
	MaxAgentsPerRepo int
	// MaxStreams bounds the client streams open in all; beyond it clients
	// are refused with 503. Default DefaultMaxStreams; negative: unlimited.
	MaxStreams int
	// MaxRegistering bounds the agents registering at once: claiming
	// their ID and being upgraded, the server's work before it waits for
	// the agent's hello. The others wait, parked in the order they came,
	// at most 10 s (then 503, and they retry). A herd of agents coming
	// back after a restart then waits outside the server's run queue
	// instead of crowding it. Default DefaultMaxRegistering; negative:
	// unlimited.
	MaxRegistering int
	// ClusterKey signs agents' registration secrets (see docs/protocol.md):
	// the key all replicas of one service share, so that any of them, or
	// this server after a restart, checks an agent's claim to its ID
	// without remembering it. At least 32 bytes written as hex or base64
	// (`openssl rand -hex 32`). Default "": the key kept in StateDir.
	ClusterKey string
	// StateDir keeps this server's own key (file server.key, mode 0600,
	// in a directory made with mode 0700) when ClusterKey is empty: made
	// once, then reused, so that a restarted server still knows its
	// agents. Default "": a key made at start and kept in memory only, so
	// after a restart agents register as new and anyone may claim their
	// IDs first (tests, embedding). The converge command defaults it to
	// DefaultStateDir.
	StateDir string
	// DrainTimeout bounds graceful shutdown. Default 10s.
	DrainTimeout time.Duration
	// DrainDelay is how long, on shutdown, /healthz answers 503 (and new
	// agents are refused with 503) before agents are released and
	// connections closed: time for a load balancer's health checks to
	// send new connections elsewhere. Default 0 for a single server;
	// DefaultClusterDrainDelay with Redis. Negative: none.
	DrainDelay time.Duration

	// Redis, when set, makes this server a replica of a cluster that
	// shares its registry in this Redis (or Valkey): redis://[:PASSWORD@]
	// HOST:PORT/DB, rediss:// for TLS, unix:///PATH. Needs Advertise and
	// ClusterKey. Default "": a single server, registry in memory.
	Redis string
	// RedisSentinels, instead of Redis, are the Redis Sentinels (HOST:PORT)
	// that name the master, which the replica follows when they fail
	// over; RedisMaster is its name there, or redis://[[USER]:PASSWORD@]
	// NAME[/DB] (rediss:// for TLS) when it needs more, as Redis would
	// say; RedisSentinelPassword is the Sentinels' own password. Default
	// none: Redis, or a single server.
	RedisSentinels        []string
	RedisMaster           string
	RedisSentinelPassword string
	// Advertise is the URL other replicas reach this one by
	// (http://HOST:PORT, https, ws or wss; a path for a server under a
	// sub-path), to forward clients of the agents it holds. Port 0 means
	// the port it listens on. Required with Redis.
	Advertise string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Version is reported to agents and shown on pages.
	Version string

	// TLSCertFile and TLSKeyFile, both set, make the server speak HTTPS
	// (and so wss) itself. Default: plain HTTP, for use behind a proxy.
	TLSCertFile, TLSKeyFile string
	// TrustedProxies are addresses or CIDR prefixes of reverse proxies
	// whose X-Forwarded-Proto, -Host and -For headers are believed.
	// Default none: the headers are ignored. From them X-Forwarded-Prefix
	// is believed too (see BasePath).
	TrustedProxies []string
	// BasePath serves everything under this path prefix, "/converge" for
	// https://example.com/converge/: incoming paths must start with it and
	// it is stripped from them (so a proxy that forwards paths unchanged
	// works), and the pages' links and recipes include it. A trusted
	// proxy that strips a prefix itself says so with X-Forwarded-Prefix
	// instead; the two add up. Validate normalises it ("/converge/" is
	// "/converge"). Default "": served at the root.
	BasePath string
	// SessionsPassword enables the sessions view (/sessions) behind HTTP
	// basic auth with this password and any user name. Default "": off.
	SessionsPassword string
	// Dist holds the downloadable binaries (see package static). Default
	// static.Dist, the ones embedded by `make dist`.
	Dist fs.FS
	// Term holds the browser terminal's files (see package static).
	// Default static.Term, which has the WebAssembly client only in a
	// server built by `make build`; without it /terminal/ID says so.
	Term fs.FS
}

// Defaults of Config fields.
const (
	// DefaultAddr is where the server listens.
	DefaultAddr = ":8000"
	// DefaultGrace is how long an ID stays reserved for an agent whose
	// link dropped.
	DefaultGrace = 5 * time.Minute
)

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.SSHUser == "" {
		c.SSHUser = "converge"
	}
	if err := wire.ValidUser(c.SSHUser); err != nil {
		return err
	}
	if c.StreamTimeout == 0 {
		c.StreamTimeout = 15 * time.Second
	}
	if c.StreamTimeout < 0 {
		return fmt.Errorf("stream timeout must be positive, got %v", c.StreamTimeout)
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.StreamPool == 0 {
		c.StreamPool = DefaultStreamPool
	}
	if c.registeringWait <= 0 {
		c.registeringWait = registeringWait
	}
	if c.poolKeep <= 0 {
		c.poolKeep = poolKeep
	}
	if c.rawKeepalive <= 0 {
		c.rawKeepalive = rawKeepalive
	}
	if c.StreamPool > MaxStreamPool {
		return fmt.Errorf("stream pool of %d per agent: at most %d (each costs the server a file descriptor)", c.StreamPool, MaxStreamPool)
	}
	c.MaxAgentsPerAddr = limitDefault(c.MaxAgentsPerAddr, DefaultMaxAgentsPerAddr)
	c.MaxReservations = limitDefault(c.MaxReservations, DefaultMaxReservations)
	c.MaxStreamsPerAddr = limitDefault(c.MaxStreamsPerAddr, DefaultMaxStreamsPerAddr)
	c.MaxAgents = limitDefault(c.MaxAgents, DefaultMaxAgents)
	c.MaxRegistering = limitDefault(c.MaxRegistering, DefaultMaxRegistering)
	c.MaxStreams = limitDefault(c.MaxStreams, DefaultMaxStreams)
	if c.ClusterKey != "" {
		if _, err := registry.ParseKey(c.ClusterKey); err != nil {
			return fmt.Errorf("cluster key (CONVERGE_CLUSTER_KEY): %w", err)
		}
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return c.validateFront()
}

// Server is the rendezvous server. Create it with New, start it with Run.
type Server struct {
	cfg  Config
	log  *slog.Logger
	idle *idlePoller                   // idle agents wait in it, not on goroutines; nil: they do (set by Run before it serves)
	reg  registry.Registry[*agentConn] // in memory, or shared in Redis (cluster)
	mux  *http.ServeMux
	// handler is mux under the base path: what is served.
	handler http.Handler

	// ctx bounds every relayed connection; cancelled at the end of a drain.
	ctx    context.Context
	cancel context.CancelFunc

	tokens *registry.Tokens // signs and verifies agents' registration secrets
	policy *policy.Policy
	quota  *policy.Quota // agents per repository

	cluster  *cluster    // nil for a single server
	peers    peers       // the cluster, or alone
	draining atomic.Bool // shutting down: /healthz says so

	streamLimit *addrLimiter
	registering gate         // agents claiming their ID and being upgraded (MaxRegistering)
	authFails   *failLimiter // wrong sessions-view passwords
	challenges  seenMACs     // agents' host-key challenges used (hostkey.go)

	conns   *conns   // hijacked WebSockets, for the drain
	pending *pending // clients waiting for their agent's stream

	proxies proxies
	tls     *tls.Config // nil: plain HTTP
	metrics *metrics
	changes *changes   // agent set and status changes, for the sessions view
	dist    *catalogue // downloadable binaries
	term    *terminal  // the browser terminal's files
}

// New returns a Server for cfg (validated by New).
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "server"),
		reg:     registry.NewMemory[*agentConn](cfg.registryLimits(), time.Now),
		peers:   alone{},
		conns:   newConns(),
		pending: newPending(),

		streamLimit: newAddrLimiter("client streams", cfg.MaxStreamsPerAddr, cfg.MaxStreams),
		registering: newGate(cfg.MaxRegistering),
		authFails:   newFailLimiter(10, 1000, time.Minute, time.Now),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	key, err := s.loadKey()
	if err != nil {
		return nil, err
	}
	s.tokens = registry.NewTokens(key, cfg.Grace)
	if err := s.setupFront(); err != nil {
		return nil, err
	}
	if err := s.setupCluster(); err != nil {
		return nil, err
	}
	if err := s.setupPolicy(); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

// loadKey returns the key that signs agents' secrets (see Config.ClusterKey
// and Config.StateDir) and logs where it comes from.
func (s *Server) loadKey() ([]byte, error) {
	switch {
	case s.cfg.ClusterKey != "":
		key, err := registry.ParseKey(s.cfg.ClusterKey)
		if err != nil {
			return nil, fmt.Errorf("cluster key (CONVERGE_CLUSTER_KEY): %w", err)
		}
		s.log.Info("server key from the cluster key", "key_id", registry.KeyID(key))
		if registry.WeakKey(key) {
			s.log.Warn("the cluster key is a short pattern repeated (all zeros?): anyone who guesses it can sign agents' secrets and forwarded requests; make one with `openssl rand -hex 32`")
		}
		return key, nil
	case s.cfg.StateDir != "":
		key, created, err := registry.LoadKey(s.cfg.StateDir)
		if err != nil {
			return nil, err
		}
		s.log.Info("server key kept in the state directory", "dir", s.cfg.StateDir, "created", created, "key_id", registry.KeyID(key))
		if registry.WritableByOthers(s.cfg.StateDir) {
			s.log.Warn("the state directory may be written by other users, who could replace the server key with one they know: run chmod 700 on it", "dir", s.cfg.StateDir)
		}
		return key, nil
	}
	key := make([]byte, registry.MinKeyBytes)
	rand.Read(key)
	s.log.Info("server key in memory only: after a restart, agents register as new", "key_id", registry.KeyID(key))
	return key, nil
}

// registryLimits are the bounds of the registry, from c.
func (c *Config) registryLimits() registry.Limits {
	return registry.Limits{Grace: c.Grace, PerAddr: c.MaxAgentsPerAddr, MaxAgents: c.MaxAgents, MaxReserved: c.MaxReservations}
}

// DefaultStateDir is where the converge command keeps its state unless
// told otherwise: $XDG_STATE_HOME/converge, else ~/.local/state/converge.
func DefaultStateDir() (string, error) { return registry.DefaultStateDir() }

// fileHeadroom is what the server holds besides agents and streams: its
// listener, its standard streams, and connections still in their HTTP
// request (pages, refused handshakes).
const fileHeadroom = 256

// MaxFiles is how many file descriptors the server may hold at its caps:
// one per agent (MaxAgents) and one per idle stream in its pool
// (StreamPool); per client stream (MaxStreams) two, the client's and the
// agent's leg, and on Linux four more for the pipes through which two raw
// legs are spliced in the kernel (splice.ExtraFiles); and some headroom.
// It is 0 when either cap is off, and so bounds nothing.
func (s *Server) MaxFiles() int {
	if s.cfg.MaxAgents < 0 || s.cfg.MaxStreams < 0 {
		return 0
	}
	return s.cfg.MaxAgents*(1+s.poolSize()) + (2+splice.ExtraFiles)*s.cfg.MaxStreams + fileHeadroom
}

// poolSize is the idle streams each agent keeps; 0 with pools off.
func (s *Server) poolSize() int { return max(s.cfg.StreamPool, 0) }

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	// Web pages elsewhere may not register agents or open client streams
	// through their visitors' browsers. (The stream endpoint needs a token
	// that only the agent learns.)
	s.mux.HandleFunc("GET "+wire.AgentPattern, s.sameOrigin(endpointAgent, s.handleAgent))
	s.mux.HandleFunc("GET "+wire.StreamPattern, s.handleStream)
	s.mux.HandleFunc("GET "+wire.ClientPattern, s.sameOrigin(endpointClient, s.handleClient))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "draining")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	s.pageRoutes()
	s.handler = s.underBasePath(s.mux)
}

// Run serves until ctx ends, then drains: it stops accepting, tells every
// agent and client the server is going away (WebSocket close 1001), and
// waits for relays to end, at most DrainTimeout.
func (s *Server) Run(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", s.cfg.Addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
		}
	}
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if s.tls != nil {
		hs.TLSConfig = s.tls
		ln = tls.NewListener(ln, s.tls)
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "ssh_user", s.cfg.SSHUser, "tls", s.tls != nil,
		"sessions_view", s.cfg.SessionsPassword != "", "downloads", len(s.dist.list))

	if p, err := newIdlePoller(); err == nil {
		s.idle = p
		defer p.stop() // after the drain (deferred before it runs): no agent is parked any more
	}
	sweepDone := make(chan struct{})
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	go func() { defer close(sweepDone); s.sweep(sweepCtx) }()
	defer func() { stopSweep(); <-sweepDone }()
	if s.cluster != nil {
		defer s.cluster.start(ln.Addr())()
	}

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		s.cancel()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	s.draining.Store(true)
	s.drainDelay()
	s.log.Info("draining", "timeout", s.cfg.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	s.changes.close() // event streams end, or Shutdown would wait for them
	err := hs.Shutdown(dctx)
	s.drain(dctx)
	<-errc
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// drain closes every hijacked WebSocket with 1001 and waits for the
// relays, until ctx ends; then it cuts what is left and waits for that.
func (s *Server) drain(ctx context.Context) {
	if left := s.conns.drain(ctx, "server shutting down; reconnect shortly"); left > 0 {
		s.log.Warn("drain deadline reached; cutting remaining connections", "left", left)
	}
	s.cancel()
	s.conns.wait()
}

// sweep closes agents whose keepalive pings stopped, and refreshes the
// tokens of the others. Agents ping every wsconn.PingInterval; three
// missed intervals mean the link is dead.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, a := range s.reg.Agents() {
				if a.ready.Load() && now.Sub(a.lastSeen()) > 3*wsconn.PingInterval {
					s.log.Info("agent silent; closing", "id", a.id, "remote", a.remote)
					a.closeNow()
				}
			}
			s.refreshTokens(ctx, now)
			if err := s.quota.Refresh(ctx); err != nil {
				s.log.Warn("per-repository count not refreshed", "error", err)
			}
		}
	}
}

// refreshTokens sends every welcomed agent whose token was signed
// registry.TokenRefresh ago or earlier a fresh one, in a welcome message, so that
// its token stays valid for the grace period after its link drops however
// long the link lived. It returns when every send has ended; a send that
// cannot complete within 10 s closes its connection.
func (s *Server) refreshTokens(ctx context.Context, now time.Time) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32) // sends at once
	for _, a := range s.reg.Agents() {
		issued := a.issued.Load()
		if issued == 0 || now.Sub(time.Unix(0, issued)) < registry.TokenRefresh {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := a.welcome(ctx); err != nil {
				s.log.Debug("token refresh failed", "id", a.id, "remote", a.remote, "error", err)
			}
		}()
	}
	wg.Wait()
}
