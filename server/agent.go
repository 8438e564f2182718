package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server/internal/policy"
)

// agentConn is one connected agent's control connection.
type agentConn struct {
	id     string
	remote string
	since  time.Time
	ws     *websocket.Conn
	seen   atomic.Int64 // unix nanoseconds of the last message or ping
	ready  atomic.Bool  // ws is set and the welcome is on its way; clients may find the agent
	// welcomed is closed once the welcome has been written (or failed):
	// other messages wait for it, so the agent always reads welcome first.
	welcomed chan struct{}
	streams  atomic.Int64 // client streams relayed now
	tenure   tenure       // of the ID, which its tokens prove
	// displaced: another agent took the ID; set before ready is read, so
	// that either the displacer sees ready and closes ws, or serveAgent
	// sees displaced and ends.
	displaced atomic.Bool
	issued    atomic.Int64    // unix nanoseconds its latest token was signed; 0 until its welcome is sent
	who       policy.Identity // what the registration policy verified; set at construction

	// pool holds the agent's idle streams when it speaks control v2 and
	// the server pools; nil otherwise. Set before ready.
	pool *streamPool

	mu        sync.Mutex
	info      wire.Info
	protocols []string
}

func (a *agentConn) lastSeen() time.Time { return time.Unix(0, a.seen.Load()) }
func (a *agentConn) touch()              { a.seen.Store(time.Now().UnixNano()) }

// Info returns what the agent last said about itself.
func (a *agentConn) Info() wire.Info {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.info
}

func (a *agentConn) offers(protocol string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.protocols, protocol)
}

func (a *agentConn) send(ctx context.Context, m wire.Message) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if m.Type != wire.TypeWelcome {
		select {
		case <-a.welcomed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return a.ws.Write(ctx, websocket.MessageText, b)
}

// handleAgent is GET /agent/{id}: an agent's control connection. The ID is
// claimed before the upgrade, so refusals are plain HTTP errors the agent
// can print; it is confirmed once the agent has said hello and been
// welcomed (see Registry).
func (s *Server) handleAgent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := wire.ValidID(id); err != nil {
		s.metrics.refused(endpointAgent, reasonBadRequest)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	presented := r.Header.Get(wire.SecretHeader)
	if presented != "" && wire.ValidToken(presented) != nil {
		s.metrics.refused(endpointAgent, reasonBadRequest)
		http.Error(w, "malformed agent secret", http.StatusBadRequest)
		return
	}
	if s.draining.Load() { // agents go to another replica, or come back once this one has restarted
		s.metrics.refused(endpointAgent, reasonShuttingDown)
		http.Error(w, "server shutting down; reconnect shortly", http.StatusServiceUnavailable)
		return
	}
	remote := s.remoteAddr(r)
	who, uncount, ok := s.admitAgent(w, r, id, remote)
	if !ok {
		return
	}
	defer uncount()
	a := &agentConn{id: id, remote: remote, since: time.Now(), welcomed: make(chan struct{}), who: who}
	a.touch()
	c := s.claimFor(id, presented, a.remote)
	a.tenure = c.tenure
	old, err := s.reg.Register(id, c, a)
	var limit *limitError
	switch {
	case errors.As(err, &limit):
		s.log.Info("agent refused", "id", id, "remote", a.remote, "reason", limit.reason)
		s.metrics.refused(endpointAgent, limit.reason)
		limit.refuse(w)
		return
	case errors.Is(err, ErrIDInUse):
		s.log.Info("agent refused", "id", id, "remote", a.remote, "reason", reasonIDInUse, "proven", c.proven)
		s.metrics.refused(endpointAgent, reasonIDInUse)
		http.Error(w, fmt.Sprintf("rendezvous ID %q is already used by a connected agent; choose another --id", id), http.StatusConflict)
		return
	case errors.Is(err, ErrIDReserved):
		s.log.Info("agent refused", "id", id, "remote", a.remote, "reason", reasonIDReserved, "proven", c.proven)
		s.metrics.refused(endpointAgent, reasonIDReserved)
		http.Error(w, fmt.Sprintf("rendezvous ID %q is reserved for an agent that is reconnecting; choose another --id", id), http.StatusConflict)
		return
	case errors.Is(err, errRegistryUnavailable):
		s.log.Warn("agent refused", "id", id, "remote", a.remote, "error", err)
		http.Error(w, "the server cannot reach its registry; retry shortly", http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if old != nil {
		closed := s.displace(old, a)
		defer func() { <-closed }()
	}
	protocols := []string{wire.ControlProtocol}
	if s.poolSize() > 0 {
		protocols = []string{wire.ControlProtocolV2, wire.ControlProtocol} // ours first: v2 when the agent offers it
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       protocols,
		InsecureSkipVerify: true, // the Origin was checked before registration (sameOrigin)
		CompressionMode:    websocket.CompressionDisabled,
		OnPingReceived:     func(context.Context, []byte) bool { a.touch(); return true },
	})
	if err != nil {
		s.reg.Unregister(id, a)
		return
	}
	a.ws = ws
	if ws.Subprotocol() == wire.ControlProtocolV2 {
		a.pool = newStreamPool(s.poolSize(), s.cfg.poolKeep, s.cfg.rawKeepalive, s.metrics.poolIdle)
	}
	ws.SetReadLimit(wire.MaxMessageSize)
	release, ok := s.conns.add(ws)
	if !ok {
		s.reg.Unregister(id, a)
		s.metrics.refused(endpointAgent, reasonShuttingDown)
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer release()
	defer s.changes.notify() // after Unregister: watchers see it gone
	defer s.reg.Unregister(id, a)
	defer a.pool.close()

	log := s.log.With("id", id, "remote", a.remote)
	err = s.serveAgent(a)
	log.Info("agent disconnected", "duration", time.Since(a.since).Round(time.Second), "reason", errString(err))
	ws.CloseNow()
}

// displace closes old, the holder of the ID a took, with close 4001. The
// closing handshake waits for old's peer, up to 5 s, and must not delay
// a's registration, so it runs on; the returned channel is closed when it
// is done.
func (s *Server) displace(old, a *agentConn) <-chan struct{} {
	reason := "replaced by a new connection of the same agent"
	if old.tenure != a.tenure {
		reason = "replaced by the agent that proved the ID is its own"
		s.log.Warn("agent took its ID back from another holder", "id", a.id, "remote", a.remote, "holder_remote", old.remote)
	}
	closed := make(chan struct{})
	old.displaced.Store(true)
	if !old.ready.Load() {
		close(closed)
		return closed
	}
	go func() {
		defer close(closed)
		old.ws.Close(wsconn.CodeReplaced, reason)
	}()
	return closed
}

// claimFor is what an agent at remote asking for id shows: the tenure its
// secret proves, or else a fresh one. A secret that proves nothing (signed
// with another key, expired, forged) is no reason to refuse: the ID may be
// free.
func (s *Server) claimFor(id, secret, remote string) claim {
	now := time.Now()
	if secret != "" {
		c, err := s.tokens.verify(id, secret, now)
		if err == nil {
			return c
		}
		s.log.Info("agent secret proves nothing", "id", id, "remote", remote, "error", err)
	}
	return claim{tenure: newTenure(now)}
}

// serveAgent runs the control protocol: hello, welcome, then status updates
// until the connection ends.
func (s *Server) serveAgent(a *agentConn) error {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	m, err := s.readControl(ctx, a)
	cancel()
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	if m.Type != wire.TypeHello {
		a.ws.Close(wsconn.CodeRefused, "first message must be hello")
		return fmt.Errorf("first message is %q, not hello", m.Type)
	}
	a.mu.Lock()
	a.info = m.Hello.Info
	a.protocols = m.Hello.Protocols
	a.mu.Unlock()
	// Ready before the welcome is written: an agent that has read its
	// welcome tells its users it is registered, and they must find it.
	a.ready.Store(true)
	if a.displaced.Load() {
		close(a.welcomed)
		a.ws.Close(wsconn.CodeReplaced, "replaced by another connection for this ID")
		return errors.New("replaced before its welcome")
	}
	err = s.welcome(s.ctx, a)
	close(a.welcomed)
	if err != nil {
		return fmt.Errorf("send welcome: %w", err)
	}
	s.reg.Confirm(a.id, a) // only now does a drop leave a reservation
	s.metrics.registrations.Inc()
	s.changes.notify()
	s.log.Info("agent connected", "id", a.id, "remote", a.remote, "hostname", a.info.Hostname, "os", a.info.OS, "version", m.Hello.Version,
		"via", a.who.Via, "verified", a.who.Summary())
	for {
		m, err := s.readControl(s.ctx, a)
		if err != nil {
			return err
		}
		switch m.Type {
		case wire.TypeStatus:
			a.mu.Lock()
			a.info.Status = *m.Status
			a.mu.Unlock()
			s.changes.notify()
		default:
			a.ws.Close(wsconn.CodeRefused, "unexpected "+m.Type+" message")
			return fmt.Errorf("unexpected %q message", m.Type)
		}
	}
}

// welcome sends a its welcome, with a freshly signed token; sent again,
// it refreshes the token (see refreshTokens).
func (s *Server) welcome(ctx context.Context, a *agentConn) error {
	now := time.Now()
	secret := s.tokens.sign(a.id, a.tenure, now)
	a.issued.Store(now.UnixNano()) // before the agent can read it
	return a.send(ctx, wire.Message{Type: wire.TypeWelcome, Welcome: &wire.Welcome{SSHUser: s.cfg.SSHUser, Secret: secret}})
}

func (s *Server) readControl(ctx context.Context, a *agentConn) (wire.Message, error) {
	typ, b, err := a.ws.Read(ctx)
	if err != nil {
		return wire.Message{}, err
	}
	a.touch()
	if typ != websocket.MessageText {
		a.ws.Close(wsconn.CodeRefused, "control messages are text")
		return wire.Message{}, fmt.Errorf("binary control message")
	}
	m, err := wire.Decode(b)
	if err != nil {
		a.ws.Close(wsconn.CodeRefused, err.Error())
		return wire.Message{}, err
	}
	return m, nil
}

func errString(err error) string {
	if wsconn.IsClosed(err) {
		return "closed"
	}
	return err.Error()
}
