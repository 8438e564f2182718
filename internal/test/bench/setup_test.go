package bench

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/agenttest"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// serverProc is bin/converge running as its own process, so that its
// memory can be read from /proc and its CPU is not shared with the
// harness's goroutines.
type serverProc struct {
	flags   []string
	cmd     *exec.Cmd
	Addr    string // 127.0.0.1:PORT
	User    string
	log     *lineLog
	stopped bool
}

// startServer runs converge on 127.0.0.1:0 with extra flags until the
// test ends and waits until it listens.
func startServer(t testing.TB, flags ...string) *serverProc {
	t.Helper()
	// One state directory for every start: a restarted server keeps its key.
	s := &serverProc{User: "bench", flags: append([]string{"--state-dir", t.TempDir()}, flags...)}
	s.start(t, "127.0.0.1:0")
	t.Cleanup(func() { s.stop(t) })
	return s
}

// start runs converge on addr and waits until it listens.
func (s *serverProc) start(t testing.TB, addr string) {
	t.Helper()
	s.log = &lineLog{addr: make(chan string, 1)}
	s.cmd = exec.Command(bin("converge"), append([]string{"--addr", addr, "--ssh-user", s.User}, s.flags...)...)
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start converge: %v", err)
	}
	select {
	case s.Addr = <-s.log.addr:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		s.cmd.Wait()
		t.Fatalf("converge did not report its address within 20s\n%s", s.log.tail())
	}
}

// stop ends the server with SIGTERM, as an operator would, and waits for
// its drain; it does nothing the second time.
func (s *serverProc) stop(t testing.TB) {
	if s.stopped {
		return
	}
	s.stopped = true
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("converge exited: %v\n%s", err, s.log.tail())
		}
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-done
		t.Errorf("converge did not stop within 20s of SIGTERM\n%s", s.log.tail())
	}
}

// restart kills the server with SIGKILL, a crash with no drain, and
// starts a new one on the same address once the old one has been gone
// for outage. It returns when the new one listens, with how long the old
// one took to be gone.
func (s *serverProc) restart(t testing.TB, outage time.Duration) (gone time.Duration) {
	t.Helper()
	start := time.Now()
	s.cmd.Process.Kill()
	s.cmd.Wait() // "signal: killed"
	gone = time.Since(start)
	time.Sleep(outage) // the outage itself (not a synchronisation)
	s.start(t, s.Addr)
	return gone
}

// URL is the server's base WebSocket URL.
func (s *serverProc) URL() string { return "ws://" + s.Addr }

// rssKiB reads the server's resident set size from /proc.
func (s *serverProc) rssKiB() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS line in /proc/%d/status", s.cmd.Process.Pid)
}

// lineLog keeps the last lines a process wrote, and passes on the address
// from converge's "listening" line.
type lineLog struct {
	mu    sync.Mutex
	part  []byte
	lines []string
	addr  chan string
	sent  bool
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := string(l.part[:i])
		l.part = l.part[i+1:]
		if !l.sent && strings.Contains(line, "msg=listening") {
			for _, f := range strings.Fields(line) {
				if a, ok := strings.CutPrefix(f, "addr="); ok {
					l.addr <- a
					l.sent = true
				}
			}
		}
		l.lines = append(l.lines, line)
		if len(l.lines) > 200 {
			l.lines = l.lines[len(l.lines)-100:]
		}
	}
	return len(p), nil
}

func (l *lineLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// benchAgent is a real agent registered with the server, whose SSH server
// also serves a plain loopback TCP listener: the direct reference.
type benchAgent struct {
	*agent.Agent
	Dir    string
	Direct string // 127.0.0.1:PORT of the direct listener
}

// startAgent runs an agent in this process, authorising c, registers it
// with s and serves its SSH server directly on a loopback listener too.
func startAgent(t testing.TB, s *serverProc, id string, c *sshtest.Client) *benchAgent {
	t.Helper()
	return startAgentVia(t, s.URL(), s.User, id, c)
}

// startAgentVia is startAgent with the agent dialling url, the server's
// base URL or a delay proxy in front of it, and expecting SSH user user.
func startAgentVia(t testing.TB, url, user, id string, c *sshtest.Client) *benchAgent {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agent.Config{
		Server: url, ID: id, Dir: dir, Out: io.Discard,
		Logger: slog.New(slog.DiscardHandler),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.SetSSHUser(user)
	served := make(chan struct{})
	go func() { defer close(served); a.Serve(ln) }()
	t.Cleanup(func() { ln.Close(); <-served }) // runs before the agent stops
	c.Trust(id, a.HostKey())
	return &benchAgent{Agent: a.Agent, Dir: dir, Direct: ln.Addr().String()}
}
