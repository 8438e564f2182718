package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/sshtest"
	"github.com/converge-ci/converge/internal/testlog"
	"github.com/converge-ci/converge/server"
)

// binDir holds the commands built once for the whole suite.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "converge-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The browser terminal's client, which converge embeds: an overlay
	// puts it into the build without touching the checkout.
	overlay, err := buildTerminal(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "build the browser terminal: %v\n", err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-overlay", overlay, "-o", dir+"/", "../../cmd/converge", "../../cmd/agent", "../../cmd/wsproxy", "../../cmd/tcptows")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build commands: %v\n%s", err, out)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// bin is the path of a built command.
func bin(name string) string { return filepath.Join(binDir, name) }

func testLogger(t testing.TB) *slog.Logger { return testlog.New(t) }

// relay is a running server.
type relay struct {
	URL  string // ws://127.0.0.1:PORT
	HTTP string // http://127.0.0.1:PORT
	User string
	Addr string
	srv  *server.Server
}

// startServer runs a server on 127.0.0.1:0 until the test ends.
func startServer(t testing.TB, mods ...func(*server.Config)) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{Listener: ln, SSHUser: "ciuser", Logger: testLogger(t).With("side", "server")}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	addr := ln.Addr().String()
	return &relay{URL: "ws://" + addr, HTTP: "http://" + addr, User: cfg.SSHUser, Addr: addr, srv: srv}
}

// runningAgent is an agent in this process.
type runningAgent struct {
	*agent.Agent
	Dir string
	Out *syncBuffer // what the agent printed for users
}

// startAgent runs an agent with id against r, authorising c's key through
// .authorized_keys in a fresh directory, and waits until it is registered.
func startAgent(t testing.TB, r *relay, id string, c *sshtest.Client, mods ...func(*agent.Config)) *runningAgent {
	t.Helper()
	dir := t.TempDir()
	if c != nil {
		if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := &syncBuffer{}
	cfg := agent.Config{Server: r.URL, ID: id, Dir: dir, Out: out, Logger: testLogger(t).With("side", "agent")}
	for _, m := range mods {
		m(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	waitFor(t, "agent registration", func() bool { return strings.Contains(out.String(), "registered") })
	if c != nil {
		c.Trust(id, a.HostKey())
	}
	return &runningAgent{Agent: a, Dir: dir, Out: out}
}

// target is how c reaches agent id through r with wsproxy.
func (r *relay) target(id string) sshtest.Target {
	return sshtest.Target{User: r.User, Alias: id, ProxyCommand: bin("wsproxy") + " " + r.URL + "/client/" + id}
}

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ io.Writer = (*syncBuffer)(nil)
