package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/faultproxy"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server"
)

// restartableServer runs a server in this process that a test can stop
// and start again on a new port, as a redeploy would.
type restartableServer struct {
	t    *testing.T
	mods []func(*server.Config)

	mu   sync.Mutex
	addr string
	stop func()
}

func newRestartableServer(t *testing.T, mods ...func(*server.Config)) *restartableServer {
	s := &restartableServer{t: t, mods: mods}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// start runs a fresh server, with an empty registry, on a new port.
func (s *restartableServer) start() {
	t := s.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{Listener: ln, SSHUser: "ciuser", Logger: testLogger(t).With("side", "server"), DrainTimeout: time.Second}
	for _, m := range s.mods {
		m(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
		})
	}
	s.mu.Unlock()
}

// kill stops the running server.
func (s *restartableServer) kill() {
	s.mu.Lock()
	stop := s.stop
	s.mu.Unlock()
	stop()
}

func (s *restartableServer) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// newProxy starts a fault-injecting proxy to target, closed at test end.
func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// viaProxy is a relay description whose URL goes through p.
func viaProxy(p *faultproxy.Proxy) *relay {
	return &relay{URL: "ws://" + p.Addr(), HTTP: "http://" + p.Addr(), User: "ciuser", Addr: p.Addr()}
}

// clientStatus is the HTTP status of GET /client/id at base (http://...).
func clientStatus(base, id string) int {
	resp, err := http.Get(base + "/client/" + id)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestAgentReappearsAfterServerRestart(t *testing.T) {
	t.Parallel()
	srv := newRestartableServer(t)
	p := newProxy(t, srv.Addr())
	c := sshtest.New(t)
	registered := make(chan struct{}, 10)
	a := startAgent(t, viaProxy(p), "phoenix", c, func(cfg *agent.Config) {
		cfg.OnRegistered = func() {
			select {
			case registered <- struct{}{}:
			default:
			}
		}
	})
	<-registered // startAgent returned: the first registration was signalled
	tgt := viaProxy(p).target("phoenix")
	c.SSH(tgt, 0, "true")

	srv.kill()
	srv.start() // a new process: empty registry, new port
	p.Retarget(srv.Addr())
	p.Cut() // what is left of the old server's connections
	waitFor(t, "agent back on the restarted server", func() bool { return clientStatus("http://"+srv.Addr(), "phoenix") != http.StatusNotFound })
	select {
	case <-registered:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent is back on the restarted server, but OnRegistered was not called again")
	}
	if got := c.SSH(tgt, 0, "echo back"); strings.TrimSpace(got.Stdout) != "back" {
		t.Errorf("after restart: stdout %q, want back", got.Stdout)
	}
	if n := strings.Count(a.Out.String(), "registered as"); n != 1 {
		t.Errorf("agent printed its instructions %d times, want once (a reconnect is not a new registration):\n%s", n, a.Out.String())
	}
}

func TestImpostorRefusedDuringGrace(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	p := newProxy(t, r.Addr)
	c := sshtest.New(t)
	a := startAgent(t, viaProxy(p), "guarded", c)

	// The agent's network goes away: its reconnects fail.
	p.Retarget(deadAddr(t))
	p.Cut()
	waitFor(t, "server to notice the agent left", func() bool { return clientStatus(r.HTTP, "guarded") == http.StatusNotFound })

	// Someone else starts an agent with the same ID: refused, with a reason.
	dir := t.TempDir()
	impostor, err := agent.New(agent.Config{Server: r.URL, ID: "guarded", Dir: dir, AuthorizedKeys: c.PublicKey, Out: io.Discard, Logger: testLogger(t).With("side", "impostor")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = impostor.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("impostor: %v; want a refusal saying the ID is reserved", err)
	}
	// A forged secret does not help either.
	hdr := http.Header{}
	hdr.Set("Converge-Agent-Secret", strings.Repeat("0", 32))
	_, err = wsconn.Dial(ctx, r.URL+"/agent/guarded", wsconn.Options{Header: hdr, Subprotocols: []string{"converge.control.v1"}})
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusConflict {
		t.Fatalf("forged secret: %v; want 409", err)
	}

	// The real agent's network comes back: it takes its ID back, and users
	// reach it (their known_hosts still holds its key).
	p.Retarget(r.Addr)
	waitFor(t, "agent back", func() bool { return clientStatus(r.HTTP, "guarded") != http.StatusNotFound })
	c.SSH(viaProxy(p).target("guarded"), 0, "true")
	_ = a
}

func TestLimitsPerAddress(t *testing.T) {
	t.Parallel()
	r := startServer(t, func(cfg *server.Config) { cfg.MaxAgentsPerAddr = 1; cfg.MaxStreamsPerAddr = 1 })
	c := sshtest.New(t)
	startAgent(t, r, "limited", c)

	// A second agent from the same address is refused with a reason.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := wsconn.Dial(ctx, r.URL+"/agent/another", wsconn.Options{Subprotocols: []string{"converge.control.v1"}})
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusTooManyRequests || !strings.Contains(re.Message, "too many agents") {
		t.Fatalf("second agent: %v; want 429 saying too many agents", err)
	}

	// One stream is allowed; a second at the same time is refused.
	held, err := wsconn.Dial(ctx, r.URL+"/client/limited", wsconn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin("wsproxy"), r.URL+"/client/limited").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "too many client streams") {
		t.Errorf("second stream: %v %q; want a refusal saying too many client streams", err, out)
	}
	held.CloseNow()
	// Once the first is gone, a stream is allowed again.
	waitFor(t, "stream slot freed", func() bool {
		res := c.Run("ssh", r.target("limited"), "", r.target("limited").Dest(), "true")
		return res.Code == 0
	})
}

// TestAgentHonoursHTTPProxy runs the agent binary with HTTP_PROXY set and
// a server host name only the proxy can resolve: registration succeeds only
// if the agent goes through the proxy, for ws:// as for http://.
func TestAgentHonoursHTTPProxy(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	proxy := startForwardProxy(t, map[string]string{"converge.invalid:80": r.Addr})

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin("agent"), "--id", "proxied", "--dir", dir, "ws://converge.invalid")
	cmd.Env = append(os.Environ(), "HTTP_PROXY=http://"+proxy.addr, "HTTPS_PROXY=", "NO_PROXY=", "http_proxy=", "https_proxy=", "no_proxy=")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	waitFor(t, "agent registered through the proxy", func() bool { return clientStatus(r.HTTP, "proxied") != http.StatusNotFound })
	if proxy.requests() == 0 {
		t.Errorf("the proxy saw no request, yet the agent registered:\n%s", out.String())
	}
}

// forwardProxy is a minimal HTTP forward proxy for plain-HTTP requests in
// absolute form (what Go sends for http:// and ws:// URLs through
// HTTP_PROXY), including WebSocket upgrades. hosts maps the host:port a
// client asks for to a real address.
type forwardProxy struct {
	addr string
	mu   sync.Mutex
	n    int
}

func (p *forwardProxy) requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func startForwardProxy(t *testing.T, hosts map[string]string) *forwardProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &forwardProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	var connsMu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				host := req.URL.Host
				if _, _, err := net.SplitHostPort(host); err != nil {
					host += ":80"
				}
				target, ok := hosts[host]
				if !ok || !req.URL.IsAbs() {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
					return
				}
				p.mu.Lock()
				p.n++
				p.mu.Unlock()
				b, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				connsMu.Lock()
				conns = append(conns, b)
				connsMu.Unlock()
				defer b.Close()
				if err := req.Write(b); err != nil {
					return
				}
				done := make(chan struct{})
				go func() { io.Copy(c, b); c.Close(); close(done) }()
				io.Copy(b, br)
				b.Close()
				<-done
			}()
		}
	}()
	return p
}
