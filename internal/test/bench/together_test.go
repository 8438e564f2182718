package bench

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/test/agenttest"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// together fills a section on shared shells (issue 20): how much later
// an observer sees what the owner types than the owner does, the agent's
// memory per attached observer, and the agent's CPU while a kept shell
// has nobody attached. Clients reach the agent's SSH server over
// loopback TCP: the relay adds the same to every participant.
func together(t *testing.T, tb *table, srv *serverProc, rounds, observers int) {
	owner := sshtest.New(t)
	watcher := sshtest.New(t)
	ownerKey, ownerSigner := newBenchKey(t)
	obsKey, obsSigner := newBenchKey(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(owner.PublicKey+"\n"+ownerKey+"\n"), 0o600)
	a := agenttest.Start(t, agent.Config{
		Server: srv.URL(), ID: "bench-together", Dir: dir, Out: io.Discard, Shell: "sh",
		Logger:       slog.New(slog.DiscardHandler),
		ObserverKeys: watcher.PublicKey + "\n" + obsKey,
	})
	a.SetSSHUser(srv.User)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); a.Serve(ln) }()
	t.Cleanup(func() { ln.Close(); <-served })
	addr := ln.Addr().String()
	hostKey := gossh.FixedHostKey(a.HostKey())

	// The owner starts the shell, makes it echo lines once (cat), and
	// leaves: a kept shell with nobody attached.
	own := dialTerm(t, addr, srv.User, ownerSigner, hostKey, "")
	own.write(t, "stty -echo; exec cat\n")
	own.write(t, "tok-ready\n")
	own.waitFor(t, "tok-ready")
	own.close()
	waitAttached(t, a, 0)
	idle := idleCPU(2 * time.Second)

	own = dialTerm(t, addr, srv.User, ownerSigner, hostKey, "attach")
	watchers := []*benchTerm{}
	for range 3 {
		watchers = append(watchers, dialTerm(t, addr, srv.User, obsSigner, hostKey, "attach"))
	}
	waitAttached(t, a, 4)
	ownLat, obsLat := make([]time.Duration, 0, rounds), make([]time.Duration, 0, rounds)
	for i := range rounds {
		tok := fmt.Sprintf("tok%06d", i)
		start := time.Now()
		own.write(t, tok+"\n")
		ownLat = append(ownLat, own.waitFor(t, tok).Sub(start))
		var last time.Time
		for _, w := range watchers {
			if at := w.waitFor(t, tok); at.After(last) {
				last = at
			}
		}
		obsLat = append(obsLat, last.Sub(start))
	}
	s := tb.add(fmt.Sprintf("Shared shell (loopback, straight to the agent): the owner types a line, %d rounds; 3 observers attached", rounds),
		"owner sees", "slowest observer", "extra")
	for _, p := range []float64{50, 95} {
		o, w := percentile(ownLat, p), percentile(obsLat, p)
		r := row{what: fmt.Sprintf("echo p%.0f", p), a: msf(o), b: msf(w), comp: msf(w - o)}
		if p == 95 {
			r.target, r.verdict = "extra ≤ 50 ms", verdict(w-o <= 50*time.Millisecond)
		}
		s.add(r)
	}
	perObs, perConn, goroutines := observerMemory(t, watcher, srv.User, addr, a, observers, 4)
	s.add(row{what: fmt.Sprintf("agent heap + stacks per OpenSSH observer (%d attached), SSH connection included", observers),
		a: fmt.Sprintf("%.1f KiB", perObs/1024), b: fmt.Sprintf("%.1f goroutines", goroutines), comp: "-"})
	s.add(row{what: "  of which the SSH connection alone (ssh -N)", a: fmt.Sprintf("%.1f KiB", perConn/1024), b: "-", comp: "-"})
	// A connection costs something: a figure of nothing or less means the
	// heap moved for other reasons meanwhile, and the row cannot say.
	s.add(row{what: "  the rest: attached to the shell", a: fmt.Sprintf("%.1f KiB", (perObs-perConn)/1024), b: "-", comp: "-",
		target: "≤ 64 KiB", verdict: verdict(perConn > 0 && perObs-perConn <= 64<<10)})
	for _, w := range watchers {
		w.close()
	}
	own.close()
	s.add(row{what: "harness CPU (the agent's), a kept shell with nobody attached, over 2 s", a: idle.String(), b: "-", comp: "-", target: "≈ 0"})
	tb.notes = append(tb.notes, "Shared shell: every client reads the shell's output from one ring at its own offset; 'extra' is the slowest of three observers minus the owner's own echo, both measured from the owner's write. Memory: the agent's heap in use plus goroutine stacks after a GC, before and after that many OpenSSH `ssh -tt ID attach` processes attached with observer keys, divided by their number; the SSH connection's share is the same measured with `ssh -N` (a login, no session); the 1 MiB scroll-back is the shell's, not theirs. An idle observer holds no output buffer (they are pooled while sending).")
}

func newBenchKey(t *testing.T) (authorized string, signer gossh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.PublicKey()))), s
}

// benchTerm is an x/crypto SSH session with a terminal, whose output a
// goroutine scans for tokens.
type benchTerm struct {
	c    *gossh.Client
	s    *gossh.Session
	in   io.WriteCloser
	seen chan string // tokens, in order, as they appear
	when chan time.Time
}

func dialTerm(t *testing.T, addr, user string, signer gossh.Signer, hk gossh.HostKeyCallback, command string) *benchTerm {
	t.Helper()
	c, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{User: user, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}, HostKeyCallback: hk})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("dumb", 24, 80, gossh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	if command == "" {
		err = s.Shell()
	} else {
		err = s.Start(command)
	}
	if err != nil {
		t.Fatal(err)
	}
	bt := &benchTerm{c: c, s: s, in: in, seen: make(chan string, 1024), when: make(chan time.Time, 1024)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, "tok"); i >= 0 {
				tok := strings.TrimSpace(line[i:])
				select { // tokens replayed at attach may be dropped
				case bt.when <- time.Now():
					bt.seen <- tok
				default:
				}
			}
		}
	}()
	return bt
}

func (b *benchTerm) write(t *testing.T, s string) {
	if _, err := io.WriteString(b.in, s); err != nil {
		t.Fatal(err)
	}
}

// waitFor returns when tok appeared (earlier tokens are skipped).
func (b *benchTerm) waitFor(t *testing.T, tok string) time.Time {
	timeout := time.After(20 * time.Second)
	for {
		select {
		case at := <-b.when:
			if got := <-b.seen; got == tok {
				return at
			}
		case <-timeout:
			t.Fatalf("%s never came back", tok)
		}
	}
}

func (b *benchTerm) close() { b.s.Close(); b.c.Close() }

// observerMemory returns the agent's heap and stacks per OpenSSH
// observer (its own process) attached to the shell, and of those what its
// SSH connection alone costs (n observers connected with ssh -N, no
// session), and goroutines per attached observer.
func observerMemory(t *testing.T, c *sshtest.Client, user, addr string, a *agenttest.Agent, n, attached int) (perObs, perConn, goroutines float64) {
	c.Trust("bench-together", a.HostKey())
	_, port, _ := net.SplitHostPort(addr)
	tgt := sshtest.Target{User: user, Alias: "bench-together"}
	fmt.Sscan(port, &tgt.Port)
	start := func(args ...string) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		var cmds []*exec.Cmd
		for range n {
			cmd := c.Command(ctx, "ssh", tgt, args...)
			if _, err := cmd.StdinPipe(); err != nil { // kept open: the observer stays
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
		}
		return func() {
			cancel()
			for _, cmd := range cmds {
				cmd.Wait()
			}
		}
	}
	before, _ := heapAndStacks()
	stop := start("-N", tgt.Dest())
	waitLogins(t, a, n)
	conns, _ := heapAndStacks()
	stop()
	waitLogins(t, a, 0)
	before2, gBefore := heapAndStacks()
	stop = start("-tt", tgt.Dest(), "attach")
	defer stop()
	waitAttached(t, a, n+attached)
	time.Sleep(500 * time.Millisecond) // let the replays finish
	after, gAfter := heapAndStacks()
	return float64(after-before2) / float64(n), float64(conns-before) / float64(n), float64(gAfter-gBefore) / float64(n)
}

// waitLogins waits until n observers are connected, as the agent's
// journal has them.
func waitLogins(t *testing.T, a *agenttest.Agent, n int) {
	here := func() int {
		k := 0
		for _, p := range journal.People(a.Journal().Entries()) {
			if p.Until.IsZero() && p.Login.Observer {
				k++
			}
		}
		return k
	}
	deadline := time.Now().Add(time.Minute)
	for here() != n+3 { // the three x/crypto observers stay
		if time.Now().After(deadline) {
			t.Fatalf("want %d more observers logged in, have %d", n, here()-3)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// heapAndStacks is this process's heap and stacks in use, signed so that
// a difference that shrank shows as such, and its goroutines, once they
// have settled: what an earlier phase left (sessions still closing, their
// goroutines still ending) is freed before the reading, not between two.
func heapAndStacks() (int64, int) {
	read := func() (int64, int) {
		runtime.GC()
		runtime.GC() // the first runs finalizers whose objects the second frees
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapInuse + m.StackInuse), runtime.NumGoroutine()
	}
	h, g := read()
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		h2, g2 := read()
		if g2 == g && h2-h < 32<<10 && h-h2 < 32<<10 {
			return h2, g2
		}
		h, g = h2, g2
	}
	return h, g
}

// waitAttached waits until the agent's one shell has n clients.
func waitAttached(t *testing.T, a *agenttest.Agent, n int) {
	deadline := time.Now().Add(time.Minute)
	for {
		if sh := a.Shells(); len(sh) == 1 && len(sh[0].Attached) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d attached: %+v", n, a.Shells())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// idleCPU is this process's CPU (the agent's, in the harness) over d
// with nothing happening.
func idleCPU(d time.Duration) time.Duration {
	self, _ := ownCPU()
	time.Sleep(d)
	after, _ := ownCPU()
	return after - self
}

// TestBenchTogether prints only the shared-shell rows.
func TestBenchTogether(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark rows run with -bench-table (make bench-together)")
	}
	tb := &table{header: machine()}
	together(t, tb, startServer(t), 200, 20)
	fmt.Print("\n" + tb.String())
}

func msf(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
