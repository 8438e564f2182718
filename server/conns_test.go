package server

import (
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsPairs makes connected WebSocket pairs through a real HTTP server on
// 127.0.0.1:0: the server's end, as a handler holds it, and the peer's.
type wsPairs struct {
	url      string
	accepted chan *websocket.Conn
}

func newWSPairs(t testing.TB) *wsPairs {
	t.Helper()
	p := &wsPairs{accepted: make(chan *websocket.Conn, 1)}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		p.accepted <- c // pair takes it before dialling the next
	}))
	t.Cleanup(ts.Close)
	p.url = "ws" + strings.TrimPrefix(ts.URL, "http")
	return p
}

// pair returns a connected pair; the caller closes both.
func (p *wsPairs) pair(t testing.TB) (server, peer *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	peer, _, err := websocket.Dial(ctx, p.url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", p.url, err)
	}
	select {
	case server = <-p.accepted:
	case <-ctx.Done():
		t.Fatal("no accepted connection")
	}
	return server, peer
}

// closeStatus reads c until it ends and returns the close code its peer
// sent (-1 if none).
func closeStatus(c *websocket.Conn) websocket.StatusCode {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := c.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// TestDrainRacesAdd is the race conns closes: handlers add their
// connection while a drain starts. Each add must be either refused, or
// seen by the drain: the connection closed with 1001, and the drain
// returning only after the handler released it. With holding and counting
// as two steps (the old track, then wg.Add), a drain could pass its wait
// between them and return while a relay still ran.
func TestDrainRacesAdd(t *testing.T) {
	const iterations, handlers = 200, 16
	p := newWSPairs(t)
	for i := range iterations {
		s, peer := p.pair(t)
		var (
			tr       = newConns()
			start    = make(chan struct{})
			ended    = make(chan struct{}) // s has ended: the drain closed it
			drained  atomic.Bool           // drain has returned
			late     atomic.Int32          // releases after drain returned
			held     atomic.Int32
			running  sync.WaitGroup
			peerCode = make(chan websocket.StatusCode, 1)
		)
		go func() { closeStatus(s); close(ended) }()
		go func() { peerCode <- closeStatus(peer) }()
		for range handlers {
			running.Go(func() {
				<-start
				spin()
				release, ok := tr.add(s)
				if !ok {
					return
				}
				held.Add(1)
				<-ended // relay until the drain closes the connection
				if drained.Load() {
					late.Add(1)
				}
				release()
			})
		}
		close(start)
		spin()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		left := tr.drain(ctx, "test drain")
		cancel()
		drained.Store(true)
		if left != 0 {
			t.Fatalf("iteration %d: drain gave up with %d connections held", i, left)
		}
		tr.wait()
		running.Wait()
		if n := late.Load(); n > 0 {
			t.Fatalf("iteration %d: drain returned while %d of %d handlers still held the connection", i, n, held.Load())
		}
		s.CloseNow() // if every add was refused, the drain did not close it
		if code := <-peerCode; held.Load() > 0 && code != websocket.StatusGoingAway {
			t.Fatalf("iteration %d: held connection closed with %v, want %v", i, code, websocket.StatusGoingAway)
		}
		<-ended
		peer.CloseNow()
	}
}

// spin yields a random number of times, to vary which of the racing
// goroutines runs first.
func spin() {
	for range rand.IntN(64) {
		runtime.Gosched()
	}
}

func TestConnsRefuseAfterDrain(t *testing.T) {
	p := newWSPairs(t)
	s, peer := p.pair(t)
	defer s.CloseNow()
	defer peer.CloseNow()
	tr := newConns()
	if left := tr.drain(context.Background(), "test"); left != 0 {
		t.Fatalf("drain of nothing left %d", left)
	}
	tr.wait()
	release, ok := tr.add(s)
	if ok {
		t.Fatal("add after drain: ok, want refused")
	}
	release() // a no-op, safe to defer
	if left := tr.drain(context.Background(), "again"); left != 0 {
		t.Fatalf("second drain left %d", left)
	}
}

// TestConnsDrainIsBounded: a handler that ignores the close keeps its
// hold; drain returns when its context ends and wait waits for the rest.
func TestConnsDrainIsBounded(t *testing.T) {
	p := newWSPairs(t)
	s, peer := p.pair(t)
	defer s.CloseNow()
	defer peer.CloseNow()
	peerCode := make(chan websocket.StatusCode, 1)
	go func() { peerCode <- closeStatus(peer) }()

	tr := newConns()
	release, ok := tr.add(s)
	if !ok {
		t.Fatal("add refused before any drain")
	}
	again, ok := tr.add(s) // a stream is held by two handlers in turn
	if !ok {
		t.Fatal("second add of the same connection refused")
	}
	again()
	again() // only the first release counts
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if left := tr.drain(ctx, "test"); left != 1 {
		t.Fatalf("drain with an ended context left %d, want 1", left)
	}
	if code := <-peerCode; code != websocket.StatusGoingAway {
		t.Errorf("peer saw close %v, want %v", code, websocket.StatusGoingAway)
	}
	waited := make(chan struct{})
	go func() { tr.wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("wait returned while a connection was held")
	default:
	}
	release()
	<-waited
}
