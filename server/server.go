// Package server is the Converge rendezvous server: a registry of connected
// agents, the WebSocket endpoints agents and clients reach, the splice that
// joins them, and the web pages.
//
// It is a bit pipe. It never links an SSH library and never sees anything
// but the ciphertext of the SSH sessions it relays, plus what agents say
// about themselves.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Config of a Server. The zero value of each field is documented; Validate
// fills defaults.
type Config struct {
	// Addr to listen on when Listener is nil. Default ":8000".
	Addr string
	// Listener, when set, is served instead of listening on Addr (tests).
	Listener net.Listener
	// SSHUser is the user name clients log in with; agents learn it at
	// registration. Default "converge".
	SSHUser string
	// StreamTimeout bounds how long a client waits for its agent to dial
	// back. Default 15s.
	StreamTimeout time.Duration
	// Grace keeps the ID of an agent whose link dropped reserved for it;
	// only agents that completed their hello and welcome leave one.
	// Default 5m; negative disables.
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
	// MaxStreams bounds the client streams open in all; beyond it clients
	// are refused with 503. Default DefaultMaxStreams; negative: unlimited.
	MaxStreams int
	// DrainTimeout bounds graceful shutdown. Default 10s.
	DrainTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Version is reported to agents and shown on pages.
	Version string

	// TLSCertFile and TLSKeyFile, both set, make the server speak HTTPS
	// (and so wss) itself. Default: plain HTTP, for use behind a proxy.
	TLSCertFile, TLSKeyFile string
	// TrustedProxies are addresses or CIDR prefixes of reverse proxies
	// whose X-Forwarded-Proto, -Host and -For headers are believed.
	// Default none: the headers are ignored.
	TrustedProxies []string
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

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.Addr == "" {
		c.Addr = ":8000"
	}
	if c.SSHUser == "" {
		c.SSHUser = "converge"
	}
	if err := validUser(c.SSHUser); err != nil {
		return err
	}
	if c.StreamTimeout == 0 {
		c.StreamTimeout = 15 * time.Second
	}
	if c.StreamTimeout < 0 {
		return fmt.Errorf("stream timeout must be positive, got %v", c.StreamTimeout)
	}
	if c.Grace == 0 {
		c.Grace = 5 * time.Minute
	}
	c.MaxAgentsPerAddr = limitDefault(c.MaxAgentsPerAddr, DefaultMaxAgentsPerAddr)
	c.MaxReservations = limitDefault(c.MaxReservations, DefaultMaxReservations)
	c.MaxStreamsPerAddr = limitDefault(c.MaxStreamsPerAddr, DefaultMaxStreamsPerAddr)
	c.MaxAgents = limitDefault(c.MaxAgents, DefaultMaxAgents)
	c.MaxStreams = limitDefault(c.MaxStreams, DefaultMaxStreams)
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return c.validateFront()
}

func validUser(u string) error {
	if len(u) > 32 {
		return fmt.Errorf("ssh user %q is longer than 32 characters", u)
	}
	for i, c := range u {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("ssh user %q has %q at position %d; use letters, digits, '.', '_' and '-'", u, c, i+1)
		}
	}
	return nil
}

// Server is the rendezvous server. Create it with New, start it with Run.
type Server struct {
	cfg Config
	log *slog.Logger
	reg Registry
	mux *http.ServeMux

	// ctx bounds every relayed connection; cancelled at the end of a drain.
	ctx    context.Context
	cancel context.CancelFunc

	streamLimit *addrLimiter
	authFails   *failLimiter // wrong sessions-view passwords

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
		cfg: cfg,
		log: cfg.Logger.With("component", "server"),
		reg: newMemRegistry(registryLimits{
			grace:       cfg.Grace,
			perAddr:     cfg.MaxAgentsPerAddr,
			maxAgents:   cfg.MaxAgents,
			maxReserved: cfg.MaxReservations,
		}, time.Now),
		conns:   newConns(),
		pending: newPending(),

		streamLimit: newAddrLimiter("client streams", reasonStreamLimit, cfg.MaxStreamsPerAddr, cfg.MaxStreams),
		authFails:   newFailLimiter(10, time.Minute, time.Now),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.setupFront(); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

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
		fmt.Fprintln(w, "ok")
	})
	s.pageRoutes()
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
		Handler:           s.mux,
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

	sweepDone := make(chan struct{})
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	go func() { defer close(sweepDone); s.sweep(sweepCtx) }()
	defer func() { stopSweep(); <-sweepDone }()

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		s.cancel()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

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

// sweep closes agents whose keepalive pings stopped. Agents ping every
// wsconn.PingInterval; three missed intervals mean the link is dead.
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
					a.ws.CloseNow()
				}
			}
		}
	}
}
