package server

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server/internal/policy"
	"github.com/converge-ci/converge/server/internal/registry"
)

// agentConn is one connected agent's control connection. It owns the
// connection's life, and its methods are the whole of it, in order:
// claim (the ID, before the upgrade), accept (the upgrade), serve (hello,
// welcome, then status updates until the link ends), and, from anywhere,
// close, closeNow and displace.
type agentConn struct {
	// Set once, at construction: read by anyone without locks.
	s        *Server
	id       string
	remote   string
	since    time.Time
	tenure   registry.Tenure   // of the ID, which its tokens prove (set by claim, before the registry holds it)
	key      ed25519.PublicKey // the host key it proved it holds, which its tokens are bound to; nil: none
	who      policy.Identity   // what the registration policy verified
	uncount  func()            // ends its count in the per-repository quota; called once, when it is done
	welcomed chan struct{}     // closed once the welcome has been written (or failed): other messages wait for it, so the agent reads welcome first

	// Set by accept, before ready is stored; read by others only once
	// they saw ready true.
	ws   *websocket.Conn
	gate *frameGate  // what ws reads through, which serve waits on between messages; nil: it waits in ws's read
	pool *streamPool // the agent's idle streams when it speaks control v2 and the server pools; nil otherwise

	// Set before the opening, read by whoever ends the agent (finish).
	release       func()          // its hold on the drain
	displacedDone <-chan struct{} // closed when the holder it displaced is closed

	// Its place in the idle poller: under the poller's lock (see
	// idlePoller).
	pollID uint32 // 0: never parked
	polled bool   // its socket is in the poller's set

	// Atomics: anyone, any time.
	seen  atomic.Int64 // unix nanoseconds of the last message or ping
	ready atomic.Bool  // ws is set and the welcome is on its way; clients may find the agent
	// displaced: another agent took the ID; set before ready is read, so
	// that either the displacer sees ready and closes ws, or serve sees
	// displaced and ends.
	displaced atomic.Bool
	streams   atomic.Int64 // client streams relayed now
	issued    atomic.Int64 // unix nanoseconds its latest token was signed; 0 until its welcome is sent

	// Under mu: what the agent says about itself, set by serve.
	mu        sync.Mutex
	info      wire.Info
	protocols []string
}

// newAgentConn is the connection of an agent at remote asking for id.
func (s *Server) newAgentConn(id, remote string, who policy.Identity, uncount func()) *agentConn {
	a := &agentConn{s: s, id: id, remote: remote, who: who, uncount: uncount, since: time.Now(), welcomed: make(chan struct{})}
	a.touch()
	return a
}

// log is the server's logger with the agent's ID and address. Made when
// something is logged, a few times in an agent's life, not kept: an idle
// agent's memory is what it keeps (docs/design.md).
func (a *agentConn) log() *slog.Logger { return a.s.log.With("id", a.id, "remote", a.remote) }

// Issued is when the agent's latest token was signed; zero before its
// welcome (see registry.Agent).
func (a *agentConn) Issued() time.Time {
	if n := a.issued.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
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

// send writes m to the agent, after its welcome unless m is the welcome.
// ctx bounds the wait for the welcome; the write has 10 s, after which
// the connection is closed.
func (a *agentConn) send(ctx context.Context, m wire.Message) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	if m.Type != wire.TypeWelcome {
		ctx, cancel := context.WithTimeout(ctx, sendTimeout)
		defer cancel()
		select {
		case <-a.welcomed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Bounded by a timer, not a context of its own: the WebSocket library
	// keeps the context of a connection's last write (and read) until the
	// next, which for an idle agent would be kept for its whole life.
	t := time.AfterFunc(sendTimeout, a.closeNow)
	defer t.Stop()
	return a.ws.Write(a.s.ctx, websocket.MessageText, b)
}

// sendTimeout bounds a control message's wait for the welcome, and its
// write.
const sendTimeout = 10 * time.Second

// handleAgent is GET /agent/{id}: an agent's control connection. The ID is
// claimed before the upgrade, so refusals are plain HTTP errors the agent
// can print; it is confirmed once the agent has said hello and been
// welcomed (see registry.Registry).
func (s *Server) handleAgent(w http.ResponseWriter, r *http.Request) {
	id := strings.Clone(r.PathValue("id")) // not a slice of the request line, which it would keep for the agent's life
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
	key, ok := s.agentKey(w, r, id, presented)
	if !ok {
		return
	}
	remote := s.remoteAddr(r)
	who, uncount, ok := s.admitAgent(w, r, id, remote, key)
	if !ok {
		return
	}
	wait, stop := context.WithTimeout(r.Context(), s.cfg.registeringWait)
	entered := s.registering.enter(wait)
	stop()
	if !entered {
		uncount()
		s.metrics.refused(endpointAgent, reasonBusy)
		http.Error(w, "server busy registering other agents; retry shortly", http.StatusServiceUnavailable)
		return
	}
	a := s.newAgentConn(id, remote, who, uncount)
	a.key = key
	displaced, ok := a.claim(w, presented)
	if !ok {
		s.registering.leave()
		uncount()
		return
	}
	release, ok := a.accept(w, r)
	s.registering.leave() // the upgrade is written; the hello is the agent's to send
	if !ok {
		<-displaced
		uncount()
		return
	}
	// The opening (hello, welcome) runs here, where the stack is deep
	// anyway; then the agent is parked in the idle poller, which costs it
	// no goroutine between messages (Linux), or else the idle rest runs on
	// a goroutine of its own, only as deep as its wait on the socket (see
	// frameGate), and net/http's goes. The drain owns the agent through
	// release, as it owns every hijacked connection.
	a.release, a.displacedDone = release, displaced
	if err := a.start(); err != nil {
		go a.finish(err)
		return
	}
	if !s.idle.park(a) {
		go func() { a.finish(a.serve()) }()
	}
}

// step reads and handles the agent's next message, on a goroutine of its
// own, once the idle poller or the close of its connection handed the
// agent over, and parks it again; it ends the agent when the connection
// has ended.
func (a *agentConn) step() {
	for {
		err := a.next()
		if err != nil {
			a.finish(err)
			return
		}
		if a.gate.holdsEarly() { // a message may be there already
			continue
		}
		if a.s.idle.park(a) {
			return
		}
		a.finish(a.serve()) // the poller has stopped: wait here
		return
	}
}

// finish ends a's control connection (with err, the reason: nil never),
// then lets go of its ID, its pool and its hold on the drain (release),
// and waits for the holder it displaced to be closed.
func (a *agentConn) finish(err error) {
	s := a.s
	a.log().Info("agent disconnected", "duration", time.Since(a.since).Round(time.Second), "reason", errString(err))
	a.closeNow()
	a.pool.close()
	if errors.Is(err, errGoodbye) {
		s.reg.Release(a.id, a)
	} else {
		s.reg.Unregister(a.id, a)
	}
	s.changes.notify() // after Unregister: watchers see it gone
	a.release()
	a.uncount()
	<-a.displacedDone
}

// claim registers a as the holder of its ID, with the tenure the agent's
// secret (presented) proves, or else a fresh one, displacing the agent
// that held it here. A refusal it answers on w, and reports false. The
// returned channel is closed once a displaced holder's close is done.
func (a *agentConn) claim(w http.ResponseWriter, presented string) (displaced <-chan struct{}, ok bool) {
	s := a.s
	c := s.claimFor(a.id, presented, a.remote, a.key)
	a.tenure = c.Tenure
	old, displacing, err := s.reg.Register(a.id, c, a)
	if err != nil {
		ref := refusalOf(err, a.id, reasonAgentLimit)
		switch {
		case ref.reason != "":
			a.log().Info("agent refused", "reason", ref.reason, "proven", c.Proven)
			s.metrics.refused(endpointAgent, ref.reason)
		case errors.Is(err, registry.ErrUnavailable):
			a.log().Warn("agent refused", "error", err)
		}
		ref.answer(w)
		return nil, false
	}
	if !displacing {
		done := make(chan struct{})
		close(done)
		return done, true
	}
	reason := "replaced by a new connection of the same agent"
	if old.tenure != a.tenure {
		reason = "replaced by the agent that proved the ID is its own"
		a.log().Warn("agent took its ID back from another holder", "holder_remote", old.remote)
	}
	return old.displace(reason), true
}

// accept upgrades the claimed connection to the control WebSocket and
// has the server hold it for the drain; the returned release lets go. On
// failure it unregisters a and reports false.
func (a *agentConn) accept(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	s := a.s
	protocols := []string{wire.ControlProtocol}
	if s.poolSize() > 0 {
		protocols = []string{wire.ControlProtocolV2, wire.ControlProtocol} // ours first: v2 when the agent offers it
	}
	lean := &leanHijack{ResponseWriter: w}
	ws, err := websocket.Accept(lean, r, &websocket.AcceptOptions{ // small buffers: see leanHijack
		Subprotocols:       protocols,
		InsecureSkipVerify: true, // the Origin was checked before registration (sameOrigin)
		CompressionMode:    websocket.CompressionDisabled,
		OnPingReceived:     func(context.Context, []byte) bool { a.touch(); return true },
	})
	if err != nil {
		s.reg.Unregister(a.id, a)
		return nil, false
	}
	a.ws, a.gate = ws, lean.gate
	if ws.Subprotocol() == wire.ControlProtocolV2 {
		a.pool = newStreamPool(s.poolSize(), s.cfg.poolKeep, s.cfg.rawKeepalive, s.metrics.poolIdle)
	}
	ws.SetReadLimit(wire.MaxMessageSize)
	release, ok = s.conns.add(ws)
	if !ok {
		s.reg.Unregister(a.id, a)
		s.metrics.refused(endpointAgent, reasonShuttingDown)
		a.close(websocket.StatusGoingAway, "server shutting down")
		return nil, false
	}
	return release, true
}

// claimFor is what an agent at remote asking for id shows: the tenure its
// secret proves, or else a fresh one. A secret that proves nothing (signed
// with another key, expired, forged) is no reason to refuse: the ID may be
// free.
func (s *Server) claimFor(id, secret, remote string, key ed25519.PublicKey) registry.Claim {
	now := time.Now()
	if secret != "" {
		c, err := s.tokens.VerifyBound(id, secret, now, key)
		if err == nil {
			c.Group = registry.AddrGroup(remote)
			return c
		}
		s.log.Info("agent secret proves nothing", "id", id, "remote", remote, "error", err)
	}
	return registry.Claim{Tenure: registry.NewTenure(now), Group: registry.AddrGroup(remote)}
}

// start runs the control protocol's opening: the agent's hello, then its
// welcome.
func (a *agentConn) start() error {
	s := a.s
	hello, err := a.hello()
	if err != nil {
		return err
	}
	// Ready before the welcome is written: an agent that has read its
	// welcome tells its users it is registered, and they must find it.
	a.ready.Store(true)
	if a.displaced.Load() {
		close(a.welcomed)
		a.close(wsconn.CodeReplaced, "replaced by another connection for this ID")
		return errors.New("replaced before its welcome")
	}
	err = a.welcome(s.ctx)
	close(a.welcomed)
	if err != nil {
		return fmt.Errorf("send welcome: %w", err)
	}
	s.reg.Confirm(a.id, a) // only now does a drop leave a reservation
	s.metrics.registrations.Inc()
	s.changes.notify()
	a.log().Info("agent connected", "hostname", hello.Info.Hostname, "os", hello.Info.OS, "version", hello.Version,
		"via", a.who.Via, "verified", a.who.Summary())
	return nil
}

// serve reads the agent's status updates until the connection ends, on
// the caller's goroutine. Between them it waits on the socket, shallow
// (see frameGate).
func (a *agentConn) serve() error {
	for {
		if a.gate != nil {
			a.gate.wait()
		}
		if err := a.next(); err != nil {
			return err
		}
	}
}

// next reads the agent's next message and does what it says: nothing
// for a nudge.
func (a *agentConn) next() error {
	s := a.s
	m, err := a.receive(s.ctx)
	if err == errNudge {
		return nil
	}
	if err != nil {
		return err
	}
	switch m.Type {
	case wire.TypeStatus:
		a.mu.Lock()
		a.info.Status = *m.Status
		a.mu.Unlock()
		s.changes.notify()
		return nil
	case wire.TypeBye:
		a.close(websocket.StatusNormalClosure, "goodbye")
		return errGoodbye
	default:
		a.close(wsconn.CodeRefused, "unexpected "+m.Type+" message")
		return fmt.Errorf("unexpected %q message", m.Type)
	}
}

// hello reads the agent's hello, within 10 s (or the connection is
// closed; a timer, for the reason in send), and records what it says.
func (a *agentConn) hello() (*wire.Hello, error) {
	t := time.AfterFunc(helloTimeout, a.closeNow)
	m, err := a.receive(a.s.ctx)
	for err == errNudge {
		m, err = a.receive(a.s.ctx)
	}
	t.Stop()
	if err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	if m.Type != wire.TypeHello {
		a.close(wsconn.CodeRefused, "first message must be hello")
		return nil, fmt.Errorf("first message is %q, not hello", m.Type)
	}
	a.mu.Lock()
	a.info = m.Hello.Info
	a.protocols = m.Hello.Protocols
	a.mu.Unlock()
	return m.Hello, nil
}

// welcome sends the agent its welcome, with a freshly signed token; sent
// again, it refreshes the token (see refreshTokens).
func (a *agentConn) welcome(ctx context.Context) error {
	now := time.Now()
	secret := a.s.tokens.SignBound(a.id, a.tenure, now, a.key)
	a.issued.Store(now.UnixNano()) // before the agent can read it
	return a.send(ctx, wire.Message{Type: wire.TypeWelcome, Welcome: &wire.Welcome{SSHUser: a.s.cfg.SSHUser, Secret: secret}})
}

// receive reads the next control message; one that is not a valid text
// message closes the connection (CodeRefused) saying why. After a ping
// it returns errNudge instead (see frameGate).
func (a *agentConn) receive(ctx context.Context) (wire.Message, error) {
	typ, b, err := a.ws.Read(ctx)
	if err != nil {
		return wire.Message{}, err
	}
	if a.gate != nil && isNudge(typ == websocket.MessageBinary, b) {
		return wire.Message{}, errNudge
	}
	m, err := wire.Parse(typ, b)
	if err != nil {
		a.close(wsconn.CodeRefused, err.Error())
		return m, err
	}
	a.touch()
	return m, nil
}

// helloTimeout bounds the wait for an agent's hello.
const helloTimeout = 10 * time.Second

// errNudge is a frameGate's nudge: no message, a ping was answered.
var errNudge = errors.New("nudge")

// close closes the connection with code and reason, waiting for the
// agent's close frame (at most 5 s); only once accepted.
func (a *agentConn) close(code websocket.StatusCode, reason string) { a.ws.Close(code, reason) }

// closeNow cuts the connection; only once accepted.
func (a *agentConn) closeNow() { a.ws.CloseNow() }

// displace marks a displaced, another connection having taken its ID
// (here or on another replica), and closes it with CodeReplaced and
// reason if it is ready; if not, serve sees the mark and ends. The close
// handshake waits for the agent, up to 5 s, and must not delay the one
// that took the ID, so it runs on; the returned channel is closed when
// it is done.
func (a *agentConn) displace(reason string) <-chan struct{} {
	closed := make(chan struct{})
	a.displaced.Store(true)
	if !a.ready.Load() {
		close(closed)
		return closed
	}
	go func() {
		defer close(closed)
		a.close(wsconn.CodeReplaced, reason)
	}()
	return closed
}

// errGoodbye ends serve when the agent said goodbye (wire.Bye): it ended
// on purpose, nobody comes back for its ID, which is free at once
// (cluster-wide). Only a dropped link keeps the ID reserved.
var errGoodbye = errors.New("the agent ended (goodbye)")

func errString(err error) string {
	if wsconn.IsClosed(err) {
		return "closed"
	}
	return err.Error()
}
