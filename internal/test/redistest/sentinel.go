package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel timing: low, so that a failover completes in a few seconds.
// A master that does not answer for DownAfter is down; the Sentinels
// then elect a leader, which promotes the replica.
const (
	DownAfter       = 1000 * time.Millisecond
	FailoverTimeout = 3000 * time.Millisecond
)

// MasterName is the name the Sentinels of StartSentinels monitor.
const MasterName = "converge"

// Sentinels is a Redis master, its replica and three Sentinels watching
// them (quorum two), as real redis-server processes on 127.0.0.1 TCP
// ports (Sentinel speaks of masters by IP and port, so no Unix sockets
// here), without persistence.
//
// Ports: Redis takes no listening socket from its parent, so each
// process gets a port the kernel just gave out and gave back; should
// another process take it meanwhile, the start is retried on another.
type Sentinels struct {
	t         testing.TB
	Nodes     []*Node // Nodes[0] is the first master, Nodes[1] its replica
	Sentinels []*Node
}

// Node is one redis-server process: a Redis or a Sentinel.
type Node struct {
	t    testing.TB
	Addr string // 127.0.0.1:PORT
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs strings.Builder
}

// StartSentinels runs the master, the replica and the Sentinels until the
// test ends, and waits until every Sentinel knows the replica and the
// other Sentinels: a failover is possible from then on.
func StartSentinels(t testing.TB) *Sentinels {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is needed (Debian: apt-get install redis-server)")
	}
	s := &Sentinels{t: t}
	base := []string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"}
	master := startNode(t, func(port int, dir string) []string {
		return append([]string{"--port", strconv.Itoa(port), "--dir", dir}, base...)
	})
	host, port, _ := net.SplitHostPort(master.Addr)
	replica := startNode(t, func(p int, dir string) []string {
		return append([]string{"--port", strconv.Itoa(p), "--dir", dir, "--replicaof", host, port}, base...)
	})
	s.Nodes = []*Node{master, replica}
	for range 3 {
		s.Sentinels = append(s.Sentinels, startNode(t, func(p int, dir string) []string {
			conf := filepath.Join(dir, "sentinel.conf") // Sentinel rewrites it: its own
			text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s %s %s 2\n"+
				"sentinel down-after-milliseconds %s %d\nsentinel failover-timeout %s %d\nsentinel parallel-syncs %s 1\n",
				p, dir, MasterName, host, port, MasterName, DownAfter.Milliseconds(), MasterName, FailoverTimeout.Milliseconds(), MasterName)
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{conf, "--sentinel"}
		}))
	}
	s.waitFor("every Sentinel to know the replica and the other Sentinels", func() bool {
		for _, sn := range s.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, Protocol: 2, DisableIdentity: true})
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			reps, err1 := c.Replicas(ctx, MasterName).Result()
			others, err2 := c.Sentinels(ctx, MasterName).Result()
			cancel()
			c.Close()
			if err1 != nil || err2 != nil || len(reps) != 1 || len(others) != 2 || !strings.Contains(reps[0]["flags"], "slave") ||
				strings.Contains(reps[0]["flags"], "down") {
				return false
			}
		}
		return true
	})
	return s
}

// Addrs are the Sentinels' addresses.
func (s *Sentinels) Addrs() []string {
	var out []string
	for _, n := range s.Sentinels {
		out = append(out, n.Addr)
	}
	return out
}

// Master is the master's address as every Sentinel says, or "" while
// they disagree (a failover is under way, or its news still spreading)
// or one does not answer.
func (s *Sentinels) Master() string {
	master := ""
	for _, sn := range s.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, Protocol: 2, DisableIdentity: true})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a, err := c.GetMasterAddrByName(ctx, MasterName).Result()
		cancel()
		c.Close()
		if err != nil || len(a) != 2 || (master != "" && master != net.JoinHostPort(a[0], a[1])) {
			return ""
		}
		master = net.JoinHostPort(a[0], a[1])
	}
	return master
}

// WaitMaster waits until every Sentinel names a master other than old,
// and returns it.
func (s *Sentinels) WaitMaster(old string) string {
	s.t.Helper()
	var m string
	s.waitFor("the Sentinels to agree on a master other than "+old, func() bool { m = s.Master(); return m != "" && m != old })
	return m
}

// Node returns the Redis node at addr.
func (s *Sentinels) Node(addr string) *Node {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	s.t.Fatalf("no Redis node at %s", addr)
	return nil
}

// Client returns a client of the master that follows failovers, closed
// when the test ends.
func (s *Sentinels) Client() *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: MasterName, SentinelAddrs: s.Addrs(), Protocol: 2, DisableIdentity: true})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// WaitSettled waits until the Sentinels agree on a master and every other
// node replicates it with its link up, and returns that master. It asks
// the Sentinels again at every try: on a loaded machine they may fail
// over once more meanwhile, even back to a master just restarted (seen
// two seconds after they had demoted it), which a wait for one node's
// role alone would wait out.
func (s *Sentinels) WaitSettled() string {
	s.t.Helper()
	var m string
	s.waitFor("a master with every other node its replica", func() bool {
		if m = s.Master(); m == "" || !hasRole(m, "master") {
			return false
		}
		for _, n := range s.Nodes {
			if n.Addr != m && !hasRole(n.Addr, "slave") {
				return false
			}
		}
		return true
	})
	return m
}

// hasRole reports whether the node at addr says it has role, and, for a
// replica, that its link to its master is up.
func hasRole(addr, role string) bool {
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil || !strings.Contains(info, "role:"+role+"\r\n") {
		return false
	}
	return role != "slave" || strings.Contains(info, "master_link_status:up\r\n")
}

func (s *Sentinels) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			var logs []string
			for _, n := range append(append([]*Node{}, s.Nodes...), s.Sentinels...) {
				logs = append(logs, n.Addr+": "+n.output())
			}
			s.t.Fatalf("timed out waiting for %s\n%s", what, strings.Join(logs, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startNode runs redis-server with the arguments args gives for a port
// and a fresh directory, retrying on another port if the one it got was
// taken meanwhile, and waits until it answers.
func startNode(t testing.TB, args func(port int, dir string) []string) *Node {
	t.Helper()
	for try := 0; ; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		n := &Node{t: t, Addr: ln.Addr().String(), args: args(port, t.TempDir())}
		err = n.start()
		if err == nil {
			t.Cleanup(n.Kill)
			return n
		}
		if n.cmd != nil {
			n.Kill()
		}
		if try == 4 {
			t.Fatal(err)
		}
	}
}

// start runs the node's process and waits until it answers.
func (n *Node) start() error {
	cmd := exec.Command("redis-server", n.args...)
	n.mu.Lock()
	n.logs.Reset()
	cmd.Stdout, cmd.Stderr = nodeWriter{n}, nodeWriter{n}
	n.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: n.Addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		select {
		case <-done:
			return fmt.Errorf("redis-server %v exited: %s", n.args, n.output())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server %v did not answer within 10 s: %s", n.args, n.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Kill ends the node with SIGKILL (kill -9: no goodbye to anyone) and
// waits for it.
func (n *Node) Kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	select {
	case <-done:
	default:
		cmd.Process.Kill()
		<-done
	}
}

// Restart starts a killed node again, on its port, with its first
// arguments: an old master comes back believing it is the master, and
// empty.
func (n *Node) Restart() {
	n.t.Helper()
	if err := n.start(); err != nil {
		n.t.Fatal(err)
	}
}

func (n *Node) output() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("%q", n.logs.String())
}

type nodeWriter struct{ n *Node }

func (w nodeWriter) Write(p []byte) (int, error) {
	w.n.mu.Lock()
	defer w.n.mu.Unlock()
	return w.n.logs.Write(p)
}
