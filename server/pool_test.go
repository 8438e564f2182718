package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// dialPoolingAgent is dialAgent for an agent that speaks control v2
// (stream pools), as agents of this version do.
func dialPoolingAgent(t *testing.T, wsBase, id string, protocols ...string) *fakeAgent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, wsBase+"/agent/"+id, wsconn.Options{Subprotocols: []string{wire.ControlProtocolV2, wire.ControlProtocol}})
	if err != nil {
		t.Fatalf("agent %s: %v", id, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	if got := c.Subprotocol(); got != wire.ControlProtocolV2 {
		t.Fatalf("control subprotocol %q, want %q", got, wire.ControlProtocolV2)
	}
	a := &fakeAgent{id: id, ws: c}
	a.send(t, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test", Protocols: protocols}})
	if m := a.read(t); m.Type != wire.TypeWelcome {
		t.Fatalf("agent %s: got %q, want welcome", id, m.Type)
	}
	return a
}

// expect reads the next control message and fails unless it is of type typ.
func (a *fakeAgent) expect(t *testing.T, typ string) wire.Message {
	t.Helper()
	m := a.read(t)
	if m.Type != typ {
		t.Fatalf("agent %s: got %q, want %q", a.id, m.Type, typ)
	}
	return m
}

// openIdle opens the idle stream a pool message granted, as the agent
// does, and returns it unread.
func (a *fakeAgent) openIdle(t *testing.T, wsBase string, m wire.Message) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, wsBase+"/agent/"+a.id+"/stream/"+m.Pool.Token, wsconn.Options{Subprotocols: []string{wire.StreamProtocol}})
	if err != nil {
		t.Fatalf("agent %s: open idle stream: %v", a.id, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// serveIdle waits on idle stream c for its assignment, checks that it
// names protocol, then echoes the client's bytes until the client goes.
func serveIdle(t *testing.T, c *websocket.Conn, protocol string) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { c.CloseNow(); <-done })
	go func() {
		defer close(done)
		typ, b, err := c.Read(context.Background())
		if err != nil {
			t.Errorf("idle stream: %v", err)
			return
		}
		m, err := wire.Decode(b)
		if typ != websocket.MessageText || err != nil || m.Type != wire.TypeAssign || m.Assign.Protocol != protocol {
			t.Errorf("idle stream's first message: %v %q %v; want an assignment of %q", typ, b, err, protocol)
			return
		}
		nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
		io.Copy(nc, nc)
		nc.Close()
	}()
}

// echoClient connects a raw client to id, checks that msg comes back,
// and leaves the connection open until the test ends.
func echoClient(t *testing.T, r *running, id, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, r.ws()+"/client/"+id, wsconn.Options{})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	if err := c.Write(ctx, websocket.MessageBinary, []byte(msg)); err != nil {
		return err
	}
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, got); err != nil || string(got) != msg {
		return fmt.Errorf("echo: %q, %v; want %q", got, err, msg)
	}
	return nil
}

// goEchoClient runs echoClient on its own goroutine, for a client whose
// agent the test plays meanwhile; wait returns its result.
func goEchoClient(t *testing.T, r *running, id, msg string) (wait func() error) {
	errc := make(chan error, 1)
	go func() { errc <- echoClient(t, r, id, msg) }()
	return func() error { return <-errc }
}

// check fails the test if err is not nil.
func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// waitIdle waits until the server reports n idle pooled streams.
func waitIdle(t *testing.T, r *running, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for value(t, scrape(t, r.http()), "converge_pooled_streams_idle") != n {
		if time.Now().After(deadline) {
			t.Fatalf("idle pooled streams did not reach %v", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoolServesTheNextClient: an agent that speaks control v2 is asked
// for an idle stream only once a client has connected (the first client's
// stream is dialled back); the next client is spliced to the idle stream,
// which the agent learns from its assignment, and the pool is refilled.
func TestPoolServesTheNextClient(t *testing.T) {
	r := runServer(t)
	a := dialPoolingAgent(t, r.ws(), "pooled")

	goEchoClient(t, r, "pooled", "first") // the pool is empty: a dial-back
	a.echoStream(t, r.ws())               // fails unless the first message is the dial
	grant := a.expect(t, wire.TypePool)
	idle := a.openIdle(t, r.ws(), grant)
	waitIdle(t, r, 1)

	serveIdle(t, idle, "")
	if err := echoClient(t, r, "pooled", "second"); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, r.http())
	if got := value(t, fams, "converge_agent_streams_total", "source", "pool"); got != 1 {
		t.Errorf("streams from the pool: %v, want 1", got)
	}
	if got := value(t, fams, "converge_agent_streams_total", "source", "dial"); got != 1 {
		t.Errorf("streams dialled back: %v, want 1", got)
	}
	refill := a.expect(t, wire.TypePool)
	if refill.Pool.Token == grant.Pool.Token {
		t.Error("the refill reuses the spent token")
	}
	a.openIdle(t, r.ws(), refill)
	waitIdle(t, r, 1)
}

// TestPoolReplacesLostStreams: an idle stream that ends (a proxy's idle
// cut, a dead link) is replaced, at once the first time; one on which the
// agent speaks before its assignment is refused with 4002 and replaced.
func TestPoolReplacesLostStreams(t *testing.T) {
	r := runServer(t)
	a := dialPoolingAgent(t, r.ws(), "lossy")
	first := goEchoClient(t, r, "lossy", "first")
	a.echoStream(t, r.ws())
	check(t, first())
	idle := a.openIdle(t, r.ws(), a.expect(t, wire.TypePool))
	waitIdle(t, r, 1)

	idle.CloseNow()
	idle = a.openIdle(t, r.ws(), a.expect(t, wire.TypePool))
	waitIdle(t, r, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := idle.Write(ctx, websocket.MessageBinary, []byte("too soon")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := idle.Read(ctx); websocket.CloseStatus(err) != wsconn.CodeRefused {
		t.Errorf("idle stream that spoke first: %v, want close 4002", err)
	}
	a.openIdle(t, r.ws(), a.expect(t, wire.TypePool)) // the second loss in a row: after a second
	waitIdle(t, r, 1)
}

// TestPoolTokensAreTheAgents: a grant is good for one stream of the agent
// it was given to, and for nothing once its control connection is gone.
func TestPoolTokensAreTheAgents(t *testing.T) {
	r := runServer(t)
	a := dialPoolingAgent(t, r.ws(), "owner")
	dialPoolingAgent(t, r.ws(), "other")
	first := goEchoClient(t, r, "owner", "first")
	a.echoStream(t, r.ws())
	check(t, first())
	grant := a.expect(t, wire.TypePool)
	if code, _, _ := get(t, r.http()+"/agent/other/stream/"+grant.Pool.Token); code != 404 {
		t.Errorf("another agent's stream with the grant: %d, want 404", code)
	}
	a.ws.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(10 * time.Second)
	for r.agent("owner") != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if code, _, _ := get(t, r.http()+"/agent/owner/stream/"+grant.Pool.Token); code != 404 {
		t.Errorf("stream with the grant of a gone control connection: %d, want 404", code)
	}
}

// TestNoPoolForV1Agents: an agent that speaks only control v1 (older
// agents) is asked to dial back for every client and never for an idle
// stream; a server with pools off speaks v1 to every agent.
func TestNoPoolForV1Agents(t *testing.T) {
	r := runServer(t)
	a := dialAgent(t, r.ws(), "old", wire.Info{})
	if got := a.ws.Subprotocol(); got != wire.ControlProtocol {
		t.Fatalf("control subprotocol %q, want %q", got, wire.ControlProtocol)
	}
	for _, msg := range []string{"first", "second"} {
		done := goEchoClient(t, r, "old", msg)
		a.echoStream(t, r.ws()) // fails on a pool message
		check(t, done())
	}

	off := runServer(t, func(c *Config) { c.StreamPool = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, off.ws()+"/agent/new", wsconn.Options{Subprotocols: []string{wire.ControlProtocolV2, wire.ControlProtocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if got := c.Subprotocol(); got != wire.ControlProtocol {
		t.Errorf("server with pools off picked %q, want %q", got, wire.ControlProtocol)
	}
}

// TestPoolEmptiesWithoutClients: a pool whose agent has had no client for
// a while closes its idle streams and asks for none, until the next
// client, whose stream is then dialled back.
func TestPoolEmptiesWithoutClients(t *testing.T) {
	r := runServer(t, func(c *Config) { c.poolKeep = 100 * time.Millisecond })
	a := dialPoolingAgent(t, r.ws(), "quiet")
	first := goEchoClient(t, r, "quiet", "first")
	a.echoStream(t, r.ws())
	check(t, first())
	idle := a.openIdle(t, r.ws(), a.expect(t, wire.TypePool))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := idle.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("idle stream of a quiet agent: %v, want closed normally", err)
	}
	waitIdle(t, r, 0)
	next := goEchoClient(t, r, "quiet", "next")
	a.echoStream(t, r.ws()) // a dial-back: fails on a pool message
	check(t, next())
	a.expect(t, wire.TypePool)
}

// openRawIdle opens the idle stream a pool message granted as a raw
// stream, as the agent does, and returns it unread.
func (a *fakeAgent) openRawIdle(t *testing.T, wsBase string, m wire.Message) net.Conn {
	t.Helper()
	c, proto := dialLeg(t, wsBase+"/agent/"+a.id+"/stream/"+m.Pool.Token, true, wire.StreamProtocol)
	if proto != wire.StreamProtocol {
		t.Fatalf("idle raw stream: protocol %q, want %q", proto, wire.StreamProtocol)
	}
	return c
}

// TestPoolRawStreams: an idle stream may be a raw stream. The server
// keeps it open with keepalive records, assigns it with a record to a
// client that speaks a stream protocol (here from a raw leg, so the two
// are spliced in the kernel), and never to a plain client, which is
// dialled back for a WebSocket instead.
func TestPoolRawStreams(t *testing.T) {
	const resumable = "converge.resume.v1"
	r := runServer(t, func(c *Config) { c.rawKeepalive = 20 * time.Millisecond })
	a := dialPoolingAgent(t, r.ws(), "rawpool", resumable)
	first := goEchoClient(t, r, "rawpool", "first")
	a.echoStream(t, r.ws())
	check(t, first())
	idle := a.openRawIdle(t, r.ws(), a.expect(t, wire.TypePool))
	waitIdle(t, r, 1)

	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	ka := make([]byte, 4)
	if _, err := io.ReadFull(idle, ka); err != nil || string(ka) != "\x00\x00\x00\x00" {
		t.Fatalf("idle raw stream: read %q, %v; want two keepalive records", ka, err)
	}

	plain := goEchoClient(t, r, "rawpool", "plain") // takes no raw stream
	a.echoStream(t, r.ws())                         // fails unless it is a dial
	check(t, plain())

	cl := make(chan net.Conn, 1)
	go func() {
		c, proto := dialLeg(t, r.ws()+"/client/rawpool", true, resumable)
		if proto != resumable {
			t.Errorf("client's protocol %q, want %q", proto, resumable)
		}
		cl <- c
	}()
	m, err := wire.ReadRecord(idle)
	if err != nil || m.Type != wire.TypeAssign || m.Assign.Protocol != resumable {
		t.Fatalf("idle raw stream: %+v, %v; want an assignment of %q", m, err, resumable)
	}
	idle.SetReadDeadline(time.Time{})
	go io.Copy(idle, idle)
	c := <-cl
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "resumed"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 7)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "resumed" {
		t.Fatalf("echo through the raw idle stream: %q, %v", got, err)
	}
	fams := scrape(t, r.http())
	if got := value(t, fams, "converge_stream_legs_total", "client", "raw", "agent", "raw"); got != 1 {
		t.Errorf("raw/raw streams: %v, want 1", got)
	}
	if got := value(t, fams, "converge_agent_streams_total", "source", "pool"); got != 1 {
		t.Errorf("streams from the pool: %v, want 1", got)
	}
}

// TestPoolRawStreamSpeaksEarly: an agent that sends bytes on an idle raw
// stream before its assignment has it closed, and it is replaced.
func TestPoolRawStreamSpeaksEarly(t *testing.T) {
	r := runServer(t)
	a := dialPoolingAgent(t, r.ws(), "chatty")
	first := goEchoClient(t, r, "chatty", "first")
	a.echoStream(t, r.ws())
	check(t, first())
	idle := a.openRawIdle(t, r.ws(), a.expect(t, wire.TypePool))
	waitIdle(t, r, 1)
	if _, err := io.WriteString(idle, "too soon"); err != nil {
		t.Fatal(err)
	}
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(idle); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("idle raw stream that spoke first: %v, want closed", err)
	}
	a.openRawIdle(t, r.ws(), a.expect(t, wire.TypePool))
	waitIdle(t, r, 1)
}
