package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"testing/fstest"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/testlog"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// agent returns the agent connected to s with id, or nil.
func (s *Server) agent(id string) *agentConn {
	a, _ := s.reg.Lookup(id)
	return a
}

func testLog(t testing.TB) *slog.Logger { return testlog.New(t) }

// newTestServer returns a Server for handler tests (not running).
func newTestServer(t testing.TB, mods ...func(*Config)) *Server {
	t.Helper()
	// No downloads unless a test gives some: the embedded ones depend on
	// whether `make dist` ran in this checkout.
	// Likewise the browser terminal's client exists only after `make build`.
	cfg := Config{SSHUser: "ciuser", Logger: testLog(t), Dist: fstest.MapFS{}, Term: termFS(t, nil)}
	for _, m := range mods {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// running is a Server running on 127.0.0.1:0.
type running struct {
	*Server
	addr   string // 127.0.0.1:PORT
	stop   func() // cancels Run
	done   chan error
	closed bool
}

func (r *running) http() string { return "http://" + r.addr }
func (r *running) ws() string   { return "ws://" + r.addr }

// shutdown stops the server as SIGTERM would and returns Run's result.
func (r *running) shutdown() error {
	r.stop()
	r.closed = true
	return <-r.done
}

// runServer runs a server until the test ends.
func runServer(t testing.TB, mods ...func(*Config)) *running {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, append([]func(*Config){func(c *Config) { c.Listener = ln }}, mods...)...)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Server: s, addr: ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		if !r.closed {
			if err := r.shutdown(); err != nil {
				t.Errorf("server: %v", err)
			}
		}
	})
	return r
}

// fakeAgent speaks the agent's side of the control protocol, with no SSH
// behind it: the server cannot tell, as it never looks inside streams.
type fakeAgent struct {
	id string
	ws *websocket.Conn
}

func (a *fakeAgent) send(t testing.TB, m wire.Message) {
	t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.ws.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("agent %s: send %s: %v", a.id, m.Type, err)
	}
}

func (a *fakeAgent) read(t testing.TB) wire.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := a.ws.Read(ctx)
	if err != nil {
		t.Fatalf("agent %s: read: %v", a.id, err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("agent %s: binary control message", a.id)
	}
	m, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// echoStream waits for the server's dial request and answers it with a
// stream that echoes what the client sends, until the client goes.
func (a *fakeAgent) echoStream(t testing.TB, wsBase string) {
	t.Helper()
	m := a.read(t)
	if m.Type != wire.TypeDial {
		t.Fatalf("agent %s: got %q, want dial", a.id, m.Type)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, wsBase+"/agent/"+a.id+"/stream/"+m.Dial.Token, wsconn.Options{Subprotocols: []string{wire.StreamProtocol}})
	if err != nil {
		t.Fatalf("agent %s: dial back: %v", a.id, err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.CloseNow(); <-done })
	go func() {
		defer close(done)
		nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
		io.Copy(nc, nc)
		nc.Close()
	}()
}

// get fetches url with the default client and returns status and body.
func get(t testing.TB, url string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// dialAgent registers a fake agent for id that describes itself with info.
func dialAgent(t testing.TB, wsBase, id string, info wire.Info) *fakeAgent {
	t.Helper()
	return dialAgentOffering(t, wsBase, id, info)
}

// offering registers a fake agent that lists protocols in its hello.
func offering(t testing.TB, wsBase, id string, protocols ...string) *fakeAgent {
	t.Helper()
	return dialAgentOffering(t, wsBase, id, wire.Info{}, protocols...)
}

// dialAgentOffering registers a fake agent that describes itself with
// info and offers clients the stream subprotocols protocols.
func dialAgentOffering(t testing.TB, wsBase, id string, info wire.Info, protocols ...string) *fakeAgent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, wsBase+wire.AgentPath(id), wsconn.Options{Subprotocols: []string{wire.ControlProtocol}})
	if err != nil {
		t.Fatalf("agent %s: %v", id, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	a := &fakeAgent{id: id, ws: c}
	a.send(t, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test", Info: info, Protocols: protocols}})
	if m := a.read(t); m.Type != wire.TypeWelcome {
		t.Fatalf("agent %s: got %q, want welcome", id, m.Type)
	}
	return a
}
