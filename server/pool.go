package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Stream pools (control protocol v2, see wire.Pool): an agent keeps a few
// streams dialled to the server before any client asks, so that a client
// is spliced to one at once instead of waiting for a dial-back, which
// costs a notice, a TCP handshake, maybe TLS, and an upgrade on the
// agent's side of the path. The server decides how many (Config.StreamPool)
// and grants each one a single-use token; the agent only ever dials what
// it was granted.
const (
	// DefaultStreamPool is the idle streams each agent keeps once a
	// client has connected to it.
	DefaultStreamPool = 1
	// MaxStreamPool bounds Config.StreamPool.
	MaxStreamPool = 4

	// poolRetryMax bounds the wait before a lost idle stream is replaced
	// when they keep being lost (see streamPool.lostLocked).
	poolRetryMax = time.Minute
	// poolHealthy: an idle stream that lived this long before it was lost
	// was not lost for want of trying; the next one is granted at once.
	poolHealthy = time.Minute
	// poolKeep is how long a pool stays full after its agent's last
	// client: then it empties, and fills again with the next client.
	// An idle stream costs the server about as much as an agent (~40 KiB
	// and a descriptor), so only agents in use keep one.
	poolKeep = 10 * time.Minute
	// rawKeepalive: an idle raw stream, which has no pings, gets a
	// keepalive record (wire.Keepalive) when the server has sent nothing
	// on it for this long, so that proxies that cut idle connections
	// keep it, as the agent's pings keep an idle WebSocket (see
	// leg.Idle.Wait).
	rawKeepalive = wsconn.PingInterval
	// assignTimeout bounds the write of an assignment.
	assignTimeout = 10 * time.Second
)

// streamPool is one agent's pool of idle streams, for the life of its
// control connection. It fills only once a client has connected to the
// agent over that connection, and empties when no client has come for
// keep: an agent nobody uses costs the server nothing more than before,
// and a server restart does not double the herd of reconnecting agents.
// Its methods accept a nil pool (an agent that speaks control v1, or a
// server with pools off) and then do nothing.
type streamPool struct {
	size      int
	keep      time.Duration
	keepalive time.Duration    // on idle raw streams, see rawKeepalive
	idleGauge prometheus.Gauge // converge_pooled_streams_idle

	mu     sync.Mutex
	active bool        // a client came within keep: keep the pool full
	expire *time.Timer // empties the pool keep after the last client
	closed bool
	tokens map[string]struct{} // granted; the agent's stream has not arrived
	idle   []*pooledStream     // oldest first
	losses int                 // idle streams lost in a row; delays the next grant
	retry  *time.Timer         // a delayed fill after a loss
	sends  sync.WaitGroup      // grants being sent, idle streams being closed
}

// pooledStream is one idle stream. Its handler (hold) waits on it while
// it is idle (leg.Idle.Wait), which answers the agent's pings and notices
// its end; what ends the wait goes to whoever took the stream.
type pooledStream struct {
	leg   *leg.Conn
	idle  *leg.Idle
	since time.Time
	taken bool // by a client; guarded by the pool's mu
}

func newStreamPool(size int, keep, keepalive time.Duration, idle prometheus.Gauge) *streamPool {
	return &streamPool{size: size, keep: keep, keepalive: keepalive, idleGauge: idle}
}

// granted reports whether token is a grant of p whose stream has not
// arrived, so that a stream nobody asked for is refused before its
// upgrade. hold spends it.
func (p *streamPool) granted(token string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.tokens[token]
	return ok && !p.closed
}

// want records that a client connected to agent a, and tops the pool up.
func (p *streamPool) want(s *Server, a *agentConn) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.active = true
	p.losses = 0
	if p.expire == nil {
		p.expire = time.AfterFunc(p.keep, p.empty)
	} else {
		p.expire.Reset(p.keep)
	}
	p.fillLocked(s, a)
}

// empty closes the idle streams of a pool whose agent had no client for
// keep, voids its grants, and stops refilling it until the next client.
// The closing handshakes run on goroutines that close waits for.
func (p *streamPool) empty() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.active = false
	p.tokens = nil
	for _, ps := range p.idle {
		p.sends.Go(func() { ps.leg.Close(websocket.StatusNormalClosure, "no client for a while") }) // its hold drops it
	}
}

// fillLocked grants tokens until the idle and the granted streams make
// size, unless a delayed fill is pending. Each grant is sent on its own
// goroutine (close waits for them), so a slow control connection never
// holds up a client.
func (p *streamPool) fillLocked(s *Server, a *agentConn) {
	if !p.active || p.closed || p.retry != nil || s.ctx.Err() != nil {
		return
	}
	for len(p.idle)+len(p.tokens) < p.size {
		token := wire.NewToken()
		if p.tokens == nil {
			p.tokens = make(map[string]struct{})
		}
		p.tokens[token] = struct{}{}
		p.sends.Go(func() {
			err := a.send(s.ctx, wire.Message{Type: wire.TypePool, Pool: &wire.Pool{Token: token}})
			if err != nil {
				p.mu.Lock()
				delete(p.tokens, token) // the control connection is failing; close follows
				p.mu.Unlock()
			}
		})
	}
}

// take returns an idle stream for a client that negotiated protocol, or
// nil when there is none. The newest is taken: the one least likely to
// have died unnoticed. Only a stream that carries protocol is taken
// (leg.Conn.Carries): a plain stream takes a WebSocket or is dialled
// back.
func (p *streamPool) take(protocol string) *pooledStream {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	for i := len(p.idle) - 1; i >= 0; i-- {
		ps := p.idle[i]
		if !ps.leg.Carries(protocol) {
			continue
		}
		p.idle = slices.Delete(p.idle, i, i+1)
		ps.taken = true
		ps.idle.Take() // stops hold's wait on a raw stream
		p.idleGauge.Dec()
		return ps
	}
	return nil
}

// hold keeps c, the agent's stream for token, idle in the pool until a
// client takes it or it ends, and returns then; handleStream calls it
// and holds c meanwhile. A stream that ends idle, or on which the agent
// speaks before it was assigned, is closed and replaced (see lostLocked).
func (p *streamPool) hold(s *Server, a *agentConn, token string, c *leg.Conn) {
	p.mu.Lock()
	if _, ok := p.tokens[token]; !ok || p.closed {
		p.mu.Unlock()
		c.Close(wsconn.CodeRefused, "the pool this stream was for is gone")
		return
	}
	delete(p.tokens, token)
	ps := &pooledStream{leg: c, idle: c.Idle(), since: time.Now()}
	p.idle = append(p.idle, ps)
	p.idleGauge.Inc()
	p.mu.Unlock()

	err := ps.idle.Wait(s.ctx, p.keepalive)
	p.mu.Lock()
	taken := ps.taken
	if !taken {
		p.idle = slices.DeleteFunc(p.idle, func(x *pooledStream) bool { return x == ps })
		p.idleGauge.Dec()
		p.lostLocked(s, a, ps)
	}
	p.mu.Unlock()
	if taken {
		return // the taker has the wait's result
	}
	if err == nil || errors.Is(err, leg.ErrSpokeEarly) {
		c.Close(wsconn.CodeRefused, "an idle stream must wait for its assignment")
		return
	}
	c.CloseNow()
}

// lostLocked replaces ps, an idle stream that ended before a client took
// it: at once when it is the first lost in a row or it lived long (a
// proxy's idle cut, a keepalive that failed), else after a wait doubling
// from a second to poolRetryMax, so that a pool that cannot be kept (a
// proxy that cuts every long connection) costs a grant a minute, not a
// loop. A stream taken by a client, or one that lived poolHealthy, starts
// the count again.
func (p *streamPool) lostLocked(s *Server, a *agentConn, ps *pooledStream) {
	if p.closed || !p.active {
		return // closed or emptied on purpose
	}
	if time.Since(ps.since) >= poolHealthy {
		p.losses = 0
	}
	p.losses++
	s.log.Debug("idle stream lost", "id", a.id, "remote", a.remote, "lived", time.Since(ps.since).Round(time.Millisecond), "in_a_row", p.losses)
	if p.losses == 1 {
		p.fillLocked(s, a)
		return
	}
	if p.retry != nil {
		return
	}
	wait := min(time.Second<<min(p.losses-2, 6), poolRetryMax)
	p.retry = time.AfterFunc(wait, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.retry = nil
		p.fillLocked(s, a)
	})
}

// close ends the pool with its control connection: idle streams are
// closed, grants not yet used are void, and it waits for grants being
// sent and closes begun by empty. Timers that fire after it find the pool
// closed and do nothing.
func (p *streamPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	if p.retry != nil {
		p.retry.Stop()
		p.retry = nil
	}
	if p.expire != nil {
		p.expire.Stop()
	}
	idle := p.idle
	p.tokens = nil
	p.mu.Unlock()
	for _, ps := range idle {
		ps.leg.CloseNow() // its hold returns and drops it
	}
	p.sends.Wait()
}

// servePooled serves GET /agent/{id}/stream/{token} when token is a pool
// grant of the agent holding id, and reports whether it was.
func (s *Server) servePooled(w http.ResponseWriter, r *http.Request, id, token string) bool {
	a, ok := s.reg.Lookup(id)
	if !ok || !a.ready.Load() || !a.pool.granted(token) { // ready: a.pool is set
		return false
	}
	c, err := leg.Accept(w, r, wire.StreamProtocol)
	if err != nil {
		return true
	}
	release, ok := s.conns.add(c)
	if !ok {
		c.Close(websocket.StatusGoingAway, "server shutting down")
		return true
	}
	defer release() // a client that takes the stream holds it itself
	a.pool.hold(s, a, token, c)
	return true
}

// agentSide is the agent's end of one client connection: a stream taken
// from the agent's pool, or one it dialled back for this client.
type agentSide struct {
	*leg.Conn
	pooled *pooledStream // nil: dialled back
}

// source names where the stream came from, in logs and metrics.
func (st agentSide) source() string {
	if st.pooled != nil {
		return "pool"
	}
	return "dial"
}

// relayed is the stream as the relay reads and writes it: a pooled
// stream starts with what ended its idle wait (leg.Idle.Relayed).
func (st agentSide) relayed(ctx context.Context) net.Conn {
	if st.pooled != nil {
		return st.pooled.idle.Relayed(ctx)
	}
	return st.Relayed(ctx)
}

// streamFor returns agent a's end for a client that negotiated protocol:
// an idle stream from its pool, told which protocol the client speaks,
// or else a dial-back. Either way the pool is topped up afterwards.
func (s *Server) streamFor(a *agentConn, protocol string) (agentSide, error) {
	defer a.pool.want(s, a)
	if ps := a.pool.take(protocol); ps != nil {
		err := ps.assign(s.ctx, protocol)
		if err == nil {
			return agentSide{Conn: ps.leg, pooled: ps}, nil
		}
		ps.leg.CloseNow() // it died idle: nothing of the client's was sent, so dial back
		s.log.Debug("idle stream failed at assignment; dialling back", "id", a.id, "error", err)
	}
	l, err := s.requestStream(a, protocol)
	return agentSide{Conn: l}, err
}

// assign tells the agent that a client speaking protocol is now spliced
// to ps (leg.Idle.Assign).
func (ps *pooledStream) assign(ctx context.Context, protocol string) error {
	ctx, cancel := context.WithTimeout(ctx, assignTimeout)
	defer cancel()
	return ps.idle.Assign(ctx, wire.Message{Type: wire.TypeAssign, Assign: &wire.Assign{Protocol: protocol}})
}
