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
	"github.com/converge-ci/converge/internal/test/agenttest"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/test/testlog"
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
	cmd := exec.Command("go", "build", "-overlay", overlay, "-o", dir+"/", "../../../cmd/converge", "../../../cmd/agent", "../../../cmd/wsproxy", "../../../cmd/tcptows")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build commands: %v\n%s", err, out)
		os.Exit(1)
	}
	binDir = dir
	home, err := ownHome()
	if err != nil {
		fmt.Fprintf(os.Stderr, "a home for the suite: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.RemoveAll(home)
	os.Exit(code)
}

// ownHome gives the suite, and the agents and shells it starts, a home
// directory of its own: the sessions' login shells must not run the
// machine user's dotfiles (on a box whose ~/.bashrc runs `pyenv
// rehash`, a shell a test ends during its start-up left pyenv's lock
// behind, and every later shell waited a minute on it). Go keeps its
// caches and settings where they were.
func ownHome() (string, error) {
	for _, kv := range [][2]string{{"GOCACHE", "go-build"}, {"GOENV", "go/env"}} {
		if os.Getenv(kv[0]) != "" {
			continue
		}
		base, err := os.UserCacheDir()
		if kv[0] == "GOENV" {
			base, err = os.UserConfigDir()
		}
		if err != nil {
			return "", err
		}
		os.Setenv(kv[0], filepath.Join(base, kv[1]))
	}
	if os.Getenv("GOPATH") == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		os.Setenv("GOPATH", filepath.Join(h, "go"))
	}
	home, err := os.MkdirTemp("", "converge-e2e-home")
	if err != nil {
		return "", err
	}
	return home, os.Setenv("HOME", home)
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
	*agenttest.Agent
	Dir string
	Out *syncBuffer // what the agent printed for users
}

// startAgent runs an agent with id against r, authorising c's key through
// .authorized_keys in a fresh directory, and waits until it is registered.
func startAgent(t testing.TB, r *relay, id string, c *sshtest.Client, mods ...func(*agent.Config)) *runningAgent {
	t.Helper()
	dir := keyDir(t, c)
	out := &syncBuffer{}
	cfg := agent.Config{Server: r.URL, ID: id, Dir: dir, Out: out, Logger: testLogger(t).With("side", "agent")}
	for _, m := range mods {
		m(&cfg)
	}
	a := agenttest.Start(t, cfg)
	if c != nil {
		c.Trust(id, a.HostKey())
	}
	return &runningAgent{Agent: a, Dir: dir, Out: out}
}

// keyDir is a fresh directory whose .authorized_keys holds c's key, or
// nothing when c is nil.
func keyDir(t testing.TB, c *sshtest.Client) string {
	t.Helper()
	dir := t.TempDir()
	if c != nil {
		if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// agentProc is the agent binary running as its own process: its exit
// status and what it prints are the contract users see.
type agentProc struct {
	t    *testing.T
	Dir  string
	cmd  *exec.Cmd
	Out  *syncBuffer // stdout: the instructions for users
	All  *syncBuffer // stdout and stderr, interleaved
	done chan struct{}
	code int // exit status, once done is closed
}

// spawnAgent starts the agent binary with args in dir, with the test's
// environment less its CONVERGE_ variables, plus env, and stdin (nil: none).
// When the test ends it is killed if still running, and its output shown
// if the test failed.
func spawnAgent(t *testing.T, dir string, env []string, stdin io.Reader, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{t: t, Dir: dir, Out: &syncBuffer{}, All: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin("agent"), args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdin = stdin
	p.cmd.Stdout, p.cmd.Stderr = io.MultiWriter(p.Out, p.All), p.All
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("agent output:\n%s", p.All)
		}
	})
	return p
}

// runAgentBinary runs `agent args... URL` against r in dir, with the
// test's environment less its CONVERGE_ variables, plus env. It waits
// until the agent prints that it registered: for the binary, its output
// is the signal. When the test ends the agent is killed if still running.
func runAgentBinary(t *testing.T, r *relay, dir string, env []string, args ...string) *agentProc {
	t.Helper()
	p := spawnAgent(t, dir, env, nil, append(args, r.URL)...)
	waitFor(t, "agent registration", func() bool {
		if !p.running() {
			t.Fatalf("agent exited with %d before registering:\n%s", p.code, p.All)
		}
		return strings.Contains(p.Out.String(), "registered")
	})
	return p
}

// exit waits for the agent to exit by itself and returns its status.
func (p *agentProc) exit() int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(30 * time.Second):
		p.t.Fatalf("the agent did not exit by itself:\n%s", p.All)
	}
	return -1
}

func (p *agentProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// cleanEnv is the test's environment without CONVERGE_ variables, so a
// developer's settings do not leak into the agent under test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONVERGE_") {
			env = append(env, kv)
		}
	}
	return env
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
