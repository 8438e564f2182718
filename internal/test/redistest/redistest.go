// Package redistest runs a real redis-server for tests: on a Unix socket
// in the test's temporary directory (no TCP port to pick), without
// persistence, so that a restart starts empty as a Redis that lost its
// data would.
//
// It is not a fake: tests that want one use miniredis. A missing
// redis-server fails the test, as a missing OpenSSH does.
package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process.
type Server struct {
	t    testing.TB
	dir  string
	sock string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs strings.Builder
}

// Start runs redis-server until the test ends and waits until it answers.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is needed (Debian: apt-get install redis-server)")
	}
	dir := t.TempDir()
	s := &Server{t: t, dir: dir, sock: filepath.Join(dir, "redis.sock")}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// URL is the server's address for go-redis and for converge --redis.
func (s *Server) URL() string { return "unix://" + s.sock }

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: s.sock, Protocol: 2, DisableIdentity: true})
	s.t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", s.sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--loglevel", "warning")
	s.mu.Lock()
	s.logs.Reset()
	cmd.Stdout, cmd.Stderr = &lockedWriter{s}, &lockedWriter{s}
	s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: s.sock, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		select {
		case <-done:
			s.t.Fatalf("redis-server exited: %s", s.output())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server did not answer within 10 s: %s", s.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop ends the server (SIGTERM: it saves nothing) and waits for it.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
	default:
		cmd.Process.Signal(terminate)
		<-done
	}
}

// Restart stops the server and starts a new, empty one on the same socket.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

func (s *Server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%q", s.logs.String())
}

type lockedWriter struct{ s *Server }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.logs.Write(p)
}
