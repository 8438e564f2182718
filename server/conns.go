package server

import (
	"context"
	"sync"

	"github.com/coder/websocket"
)

// conns is the set of hijacked connections the server holds (agents'
// control WebSockets, both legs of every client stream, WebSockets or
// raw streams, and the connections a replica forwards) and the count a
// drain waits on. http.Server.Shutdown
// neither sees nor waits for hijacked connections; conns does.
//
// Holding a connection and counting it are one step under one lock (add),
// so a drain either sees a connection, closes it and waits for its release,
// or the add is refused: nothing slips in between.
type conns struct {
	mu       sync.Mutex
	live     map[closeNower]int // holds per connection; a stream is held by two handlers in turn
	n        int                // holds not yet released, plus closes drain has not finished
	draining bool
	idle     chan struct{} // closed once draining and n is zero
}

// closeNower is a connection conns holds: a *websocket.Conn or a
// *leg.Conn, which a drain closes with 1001 (going away, see
// codeCloser), or a forwarded connection, which it can only close.
type closeNower interface{ CloseNow() error }

// codeCloser is a held connection that can say why it closes: a
// *websocket.Conn, or a *leg.Conn (a raw stream leg just closes).
type codeCloser interface {
	Close(code websocket.StatusCode, reason string) error
}

func newConns() *conns {
	return &conns{live: make(map[closeNower]int), idle: make(chan struct{})}
}

// add holds c until release is called. It reports false, holding nothing,
// once a drain has started; release is then a no-op, so it may always be
// deferred. release may be called more than once; only the first counts.
// The same connection may be held more than once at a time.
func (t *conns) add(c closeNower) (release func(), ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return func() {}, false
	}
	t.live[c]++
	t.n++
	var once sync.Once
	return func() { once.Do(func() { t.release(c) }) }, true
}

func (t *conns) release(c closeNower) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[c]--; t.live[c] <= 0 {
		delete(t.live, c)
	}
	t.done()
}

// done ends one hold or close; t.mu is held.
func (t *conns) done() {
	t.n--
	if t.draining && t.n == 0 {
		close(t.idle)
	}
}

// drain refuses further adds, closes every held connection (WebSockets
// with 1001, going away, giving reason), and waits until every hold is released and
// every close has finished, or until ctx ends. It returns how many
// connections were still held when it returned: 0 when all were released.
// A second drain only waits. After a drain, wait waits for the rest
// without a bound.
func (t *conns) drain(ctx context.Context, reason string) (left int) {
	t.mu.Lock()
	if !t.draining {
		t.draining = true
		for c := range t.live {
			t.n++ // the close below, so that wait also waits for it
			go func() {
				if cc, ok := c.(codeCloser); ok {
					cc.Close(websocket.StatusGoingAway, reason)
				} else {
					c.CloseNow()
				}
				t.mu.Lock()
				t.done()
				t.mu.Unlock()
			}()
		}
		if t.n == 0 {
			close(t.idle)
		}
	}
	t.mu.Unlock()

	select {
	case <-t.idle:
		return 0
	case <-ctx.Done():
		t.mu.Lock()
		defer t.mu.Unlock()
		return len(t.live)
	}
}

// wait returns once a drain has started and every hold and close has ended.
func (t *conns) wait() { <-t.idle }
