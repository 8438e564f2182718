package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/wire"
)

// received returns the stream waiting on streams, or nil if none is.
func received(streams <-chan *leg.Conn) *leg.Conn {
	select {
	case c := <-streams:
		return c
	default:
		return nil
	}
}

// legPairs makes connected pairs of a server's leg (a WebSocket, through
// leg.Accept) and its peer.
type legPairs struct {
	url      string
	accepted chan *leg.Conn
}

func newLegPairs(t testing.TB) *legPairs {
	t.Helper()
	p := &legPairs{accepted: make(chan *leg.Conn, 1)}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := leg.Accept(w, r, "")
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
func (p *legPairs) pair(t testing.TB) (server *leg.Conn, peer *websocket.Conn) {
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

func TestPendingDeliver(t *testing.T) {
	p := newPending()
	s, peer := newLegPairs(t).pair(t)
	defer s.CloseNow()
	defer peer.CloseNow()

	token, streams, cancel := p.expect("agent-1")
	defer cancel()
	if err := wire.ValidToken(token); err != nil {
		t.Fatalf("expect gave token %q: %v", token, err)
	}
	if !p.waiting("agent-1", token) {
		t.Fatal("waiting(agent-1, token) = false before deliver, want true")
	}
	if !p.deliver("agent-1", token, s) {
		t.Fatal("deliver(agent-1, token) = false, want true")
	}
	if got := received(streams); got != s {
		t.Fatalf("received %p, want the delivered %p", got, s)
	}
	if p.waiting("agent-1", token) {
		t.Error("waiting after deliver = true, want false (the token is spent)")
	}
}

func TestPendingTokensAreDistinct(t *testing.T) {
	p := newPending()
	t1, _, cancel1 := p.expect("agent-1")
	defer cancel1()
	t2, _, cancel2 := p.expect("agent-1")
	defer cancel2()
	if t1 == t2 {
		t.Fatalf("two waits got the same token %q", t1)
	}
}

func TestPendingWrongAgent(t *testing.T) {
	p := newPending()
	s, peer := newLegPairs(t).pair(t)
	defer s.CloseNow()
	defer peer.CloseNow()

	token, streams, cancel := p.expect("agent-1")
	defer cancel()
	if p.waiting("agent-2", token) {
		t.Error("waiting(agent-2, agent-1's token) = true, want false")
	}
	if p.deliver("agent-2", token, s) {
		t.Fatal("deliver(agent-2, agent-1's token) = true, want false")
	}
	if got := received(streams); got != nil {
		t.Fatal("a stream from the wrong agent arrived")
	}
	if !p.deliver("agent-1", token, s) {
		t.Fatal("deliver(agent-1) after a wrong agent's try = false, want true (only the right agent spends a token)")
	}
}

func TestPendingDoubleDeliver(t *testing.T) {
	p := newPending()
	pairs := newLegPairs(t)
	s1, peer1 := pairs.pair(t)
	defer s1.CloseNow()
	defer peer1.CloseNow()
	s2, peer2 := pairs.pair(t)
	defer s2.CloseNow()
	defer peer2.CloseNow()

	token, streams, cancel := p.expect("agent-1")
	defer cancel()
	if !p.deliver("agent-1", token, s1) {
		t.Fatal("first deliver = false, want true")
	}
	if p.deliver("agent-1", token, s2) {
		t.Fatal("second deliver with the same token = true, want false (single use)")
	}
	if got := received(streams); got != s1 {
		t.Fatalf("received %p, want the first stream %p", got, s1)
	}
	if got := received(streams); got != nil {
		t.Fatal("a second stream arrived")
	}
}

func TestPendingDeliverAfterCancel(t *testing.T) {
	p := newPending()
	s, peer := newLegPairs(t).pair(t)
	defer s.CloseNow()
	defer peer.CloseNow()

	token, streams, cancel := p.expect("agent-1")
	cancel()
	cancel() // more than once is fine
	if p.waiting("agent-1", token) {
		t.Error("waiting after cancel = true, want false")
	}
	if p.deliver("agent-1", token, s) {
		t.Fatal("deliver after cancel = true, want false")
	}
	if got := received(streams); got != nil {
		t.Fatal("a stream arrived after cancel")
	}
}

// TestPendingCancelClosesUnreceived: a stream delivered just as the client
// gave up is closed by cancel, not leaked.
func TestPendingCancelClosesUnreceived(t *testing.T) {
	p := newPending()
	s, peer := newLegPairs(t).pair(t)
	defer s.CloseNow()
	defer peer.CloseNow()

	token, _, cancel := p.expect("agent-1")
	if !p.deliver("agent-1", token, s) {
		t.Fatal("deliver = false, want true")
	}
	cancel()
	if code := closeStatus(peer); code != -1 {
		t.Errorf("agent's end saw close code %v, want none (the stream is cut)", code)
	}
}

// TestStreamNobodyWaitsFor is refused before the upgrade, with a sentence.
func TestStreamNobodyWaitsFor(t *testing.T) {
	r := runServer(t)
	code, _, body := get(t, r.http()+"/agent/agent-1/stream/"+wire.NewToken())
	if code != 404 || !strings.Contains(body, "no client is waiting") {
		t.Errorf("stream with an unknown token: %d %q, want 404 saying no client is waiting", code, body)
	}
}
