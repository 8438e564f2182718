package server

import (
	"sync"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/wire"
)

// pending holds the clients waiting for their agent to dial back a stream
// connection. Each wait has a single-use token that only the agent, over
// its control connection, learns.
type pending struct {
	mu    sync.Mutex
	waits map[string]*wait // by token
}

// wait is one client waiting for a stream from one agent.
type wait struct {
	agentID string
	stream  chan *leg.Conn // buffered 1; receives at most one stream
}

func newPending() *pending { return &pending{waits: make(map[string]*wait)} }

// expect starts a wait for a stream from agent agentID. The stream, once
// delivered with token, arrives on streams (at most one ever does; the
// receiver owns it). cancel ends the wait and must be called: after it a
// deliver with token reports false, and a stream delivered but not
// received is closed. cancel may be called more than once.
func (p *pending) expect(agentID string) (token string, streams <-chan *leg.Conn, cancel func()) {
	w := &wait{agentID: agentID, stream: make(chan *leg.Conn, 1)}
	token = wire.NewToken()
	p.mu.Lock()
	p.waits[token] = w
	p.mu.Unlock()
	return token, w.stream, func() { p.cancel(token, w) }
}

func (p *pending) cancel(token string, w *wait) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.waits, token) // a deliver after this finds nothing
	select {
	case c := <-w.stream: // delivered after the client gave up
		c.CloseNow()
	default:
	}
}

// waiting reports whether a client waits for agentID's stream with token,
// so that a stream nobody waits for is refused before its upgrade. It
// spends nothing: a deliver that follows may still report false.
func (p *pending) waiting(agentID, token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.waits[token]
	return w != nil && w.agentID == agentID
}

// deliver hands stream c to the client waiting for agentID's stream with
// token, and spends the token. It reports false, and c stays the caller's
// to close, when no client waits: an unknown, spent or cancelled token, or
// a token of another agent (which does not spend it).
func (p *pending) deliver(agentID, token string, c *leg.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.waits[token]
	if w == nil || w.agentID != agentID {
		return false
	}
	delete(p.waits, token) // single use
	w.stream <- c          // buffered, sent once: never blocks
	return true
}
