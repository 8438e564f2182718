package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/redistest"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// The cluster tests run real processes: redis-server on a Unix socket in
// a temporary directory, replicas as the converge binary on 127.0.0.1:0
// (each advertises the port it got: --advertise http://127.0.0.1:0), and
// HAProxy with deploy/haproxy.cfg. HAProxy's front end needs a TCP port:
// the test listens on 127.0.0.1:0 and hands the socket to HAProxy as
// fd 3 (bind fd@3), so no port is ever closed and reused. A replica is
// added as operators add one without a reload: a spare server slot,
// given its address and enabled through HAProxy's runtime API (a reload
// with -sf crashed HAProxy 2.6's old process on fd@ listeners).

const clusterKey = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"

// clusterRig is a Redis, replicas sharing it, and maybe HAProxy in front.
type clusterRig struct {
	t     *testing.T
	redis *redistest.Server
	rdb   *redis.Client
	reps  []*serverProc
	lb    *haproxyProc
	extra []string // more flags for every replica started
}

func newClusterRig(t *testing.T, replicas int, withLB bool) *clusterRig {
	t.Helper()
	rs := redistest.Start(t)
	rig := &clusterRig{t: t, redis: rs, rdb: rs.Client()}
	for range replicas {
		rig.reps = append(rig.reps, rig.startReplica(""))
	}
	if withLB {
		rig.lb = startHAProxy(t, rig.addrs())
	}
	return rig
}

// startReplica runs a replica, on addr if given (a restart in place).
func (rig *clusterRig) startReplica(addr string) *serverProc {
	rig.t.Helper()
	args := []string{"--redis", rig.redis.URL(), "--advertise", "http://127.0.0.1:0",
		"--drain-delay", "1s", "--drain-timeout", "5s", "--trusted-proxy", "127.0.0.1"}
	if addr != "" {
		args = append(args, "--addr", addr)
	}
	args = append(args, rig.extra...)
	return startServerProcEnv(rig.t, []string{"CONVERGE_CLUSTER_KEY=" + clusterKey}, args...)
}

func (rig *clusterRig) addrs() []string {
	var out []string
	for _, r := range rig.reps {
		out = append(out, r.addr)
	}
	return out
}

// relay is how clients and agents reach replica i directly.
func (rig *clusterRig) relay(i int) *relay {
	a := rig.reps[i].addr
	return &relay{URL: "ws://" + a, HTTP: "http://" + a, User: "ciuser", Addr: a}
}

// owner is the index of the replica Redis says holds id, or -1.
func (rig *clusterRig) owner(id string) int {
	v, err := rig.rdb.HGet(context.Background(), "converge:ids", id).Result()
	if err != nil {
		return -1
	}
	var e struct {
		Owner string `json:"o"`
	}
	json.Unmarshal([]byte(v), &e)
	for i, r := range rig.reps {
		if e.Owner == "ws://"+r.addr {
			return i
		}
	}
	return -1
}

// term stops p with SIGTERM, as a deploy does, and waits for it.
func (p *serverProc) term() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		p.t.Errorf("converge after SIGTERM: %v\n%s", err, p.logs.String())
	}
}

// haproxyProc is HAProxy running deploy/haproxy.cfg in front of replicas.
type haproxyProc struct {
	t     *testing.T
	addr  string
	admin string // the runtime API's Unix socket
	slots int    // servers r1..rN in its configuration
	used  int    // of which have replicas
}

// haproxySpares is how many replicas a running HAProxy may gain.
const haproxySpares = 1

func startHAProxy(t *testing.T, backends []string) *haproxyProc {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatal("haproxy is needed (Debian: apt-get install haproxy)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close() // f holds the socket
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := &haproxyProc{t: t, addr: ln.Addr().String(), admin: filepath.Join(dir, "admin.sock"), slots: len(backends) + haproxySpares, used: len(backends)}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(haproxyConfig(t, backends, h.admin)), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cmd := exec.Command("haproxy", "-db", "-f", path)
	cmd.ExtraFiles = []*os.File{f} // fd 3
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		f.Close()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", logs.String())
		}
	})
	waitFor(t, "haproxy to serve", func() bool {
		resp, err := quickClient.Get("http://" + h.addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return h
}

// add puts the replica at addr into a spare server slot, as an operator
// adds one with HAProxy's runtime API, and waits until HAProxy sends it
// traffic.
func (h *haproxyProc) add(addr string) {
	h.t.Helper()
	if h.used >= h.slots {
		h.t.Fatal("no spare server slot left in HAProxy")
	}
	h.used++
	name := fmt.Sprintf("replicas/r%d", h.used)
	host, port, _ := net.SplitHostPort(addr)
	h.command(fmt.Sprintf("set server %s addr %s port %s", name, host, port))
	h.command("enable server " + name)
	h.command("enable health " + name)
	waitFor(h.t, name+" up in HAProxy", func() bool {
		return strings.Contains(h.command("show servers state replicas"), " r"+strconv.Itoa(h.used)+" "+host+" 2 ")
	})
}

// command runs one runtime API command and returns its answer.
func (h *haproxyProc) command(cmd string) string {
	h.t.Helper()
	c, err := net.Dial("unix", h.admin)
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		h.t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		h.t.Fatalf("haproxy %q: %v", cmd, err)
	}
	return string(b)
}

// haproxyConfig is deploy/haproxy.cfg listening on fd 3, checking every
// 100 ms, with backends as its servers plus haproxySpares disabled ones,
// and its runtime API on the Unix socket admin.
func haproxyConfig(t *testing.T, backends []string, admin string) string {
	b, err := os.ReadFile("../../../deploy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	bound, checked := false, false
	for _, line := range strings.Split(string(b), "\n") {
		switch f := strings.Fields(line); {
		case len(f) >= 1 && f[0] == "global":
			line += "\n    stats socket " + admin + " mode 600 level admin"
		case len(f) >= 2 && f[0] == "bind":
			line, bound = "    bind fd@3", true
		case len(f) >= 1 && f[0] == "server":
			continue
		case len(f) >= 1 && f[0] == "default-server":
			line, checked = strings.Replace(line, "inter 2s", "inter 100ms", 1), strings.Contains(line, "inter 2s")
		}
		out = append(out, line)
	}
	if !bound || !checked {
		t.Fatalf("deploy/haproxy.cfg has no bind line or no default-server inter 2s (bind %v, inter %v): update the test", bound, checked)
	}
	for i, a := range backends {
		out = append(out, fmt.Sprintf("    server r%d %s check", i+1, a))
	}
	for i := range haproxySpares {
		out = append(out, fmt.Sprintf("    server r%d 127.0.0.1:1 check disabled", len(backends)+i+1))
	}
	return strings.Join(out, "\n") + "\n"
}

// quickClient gives up on a request after 2 s.
var quickClient = &http.Client{Timeout: 2 * time.Second}

// relay is how clients and agents reach the cluster through HAProxy.
func (h *haproxyProc) relay() *relay {
	return &relay{URL: "ws://" + h.addr, HTTP: "http://" + h.addr, User: "ciuser", Addr: h.addr}
}

// TestClusterReachesEveryAgent: any client reaches any agent through any
// replica and through HAProxy; 32 MiB of sftp through a replica that does
// not hold the agent arrive byte-exact; a fourth replica added to HAProxy
// reaches every agent too.
func TestClusterReachesEveryAgent(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 3, true)
	c := sshtest.New(t)
	ids := []string{"alpha", "bravo", "charlie", "delta"}
	var dir string
	for _, id := range ids {
		a := startAgent(t, rig.lb.relay(), id, c)
		if dir == "" {
			dir = a.Dir
		}
	}
	for _, id := range ids {
		for i := range rig.reps {
			if got := c.SSH(rig.relay(i).target(id), 0, "echo "+id); strings.TrimSpace(got.Stdout) != id {
				t.Errorf("%s via replica %d: %q", id, i, got.Stdout)
			}
		}
		c.SSH(rig.lb.relay().target(id), 0, "true")
	}

	owner := rig.owner(ids[0])
	if owner < 0 {
		t.Fatalf("Redis names no replica as %s's holder", ids[0])
	}
	via := (owner + 1) % len(rig.reps)
	data := make([]byte, 32<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "payload.bin")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "back.bin")
	tgt := rig.relay(via).target(ids[0])
	if r := c.Run("sftp", tgt, fmt.Sprintf("put %s up.bin\nget up.bin %s\n", local, back), "-b", "-", tgt.Dest()); r.Code != 0 {
		t.Fatalf("sftp via replica %d (holder %d): exit %d\n%s", via, owner, r.Code, r.Stderr)
	}
	for _, path := range []string{filepath.Join(dir, "up.bin"), back} {
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, %v; want the %d sent, byte-exact (first difference at %d)", path, len(got), err, len(data), firstDifference(got, data))
		}
	}
	if n := metric(t, rig.relay(via).HTTP, `converge_forwarded_streams_total{kind="client"}`); n < 1 {
		t.Errorf("replica %d forwarded %v clients, want at least the sftp", via, n)
	}

	rig.reps = append(rig.reps, rig.startReplica(""))
	rig.lb.add(rig.reps[3].addr)
	for _, id := range ids {
		c.SSH(rig.relay(3).target(id), 0, "true")
		c.SSH(rig.lb.relay().target(id), 0, "true")
	}
}

// TestClusterOwnerKilled: kill -9 of the replica holding the agent during
// a running command: the command goes on with every byte (the stream
// resumes through another replica), and the agent is reachable again
// within seconds.
func TestClusterOwnerKilled(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 3, true)
	c := sshtest.New(t)
	startAgent(t, rig.lb.relay(), "victim", c, func(cfg *agent.Config) { cfg.ResumeWindow = time.Minute })
	tgt := rig.lb.relay().target("victim")
	echo := startEcho(t, c, tgt)
	owner := rig.owner("victim")
	if owner < 0 {
		t.Fatal("Redis names no holder for the agent")
	}
	killed := time.Now()
	rig.reps[owner].kill()
	echo.roundTrip()
	waitFor(t, "the agent held by another replica", func() bool { o := rig.owner("victim"); return o >= 0 && o != owner })
	for c.Run("ssh", tgt, "", tgt.Dest(), "true").Code != 0 {
		if time.Since(killed) > 20*time.Second {
			t.Fatal("the agent was not reachable through HAProxy within 20 s of its replica's death")
		}
	}
	t.Logf("agent reachable again %v after its replica was killed", time.Since(killed).Round(time.Millisecond))
	echo.roundTrip()
	echo.finish()
}

// TestClusterRollingRestart: every replica in turn gets SIGTERM and
// comes back on its address, during a session: nothing is lost.
func TestClusterRollingRestart(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 3, true)
	c := sshtest.New(t)
	startAgent(t, rig.lb.relay(), "steady", c, func(cfg *agent.Config) { cfg.ResumeWindow = time.Minute })
	tgt := rig.lb.relay().target("steady")
	echo := startEcho(t, c, tgt)
	for i := range rig.reps {
		addr := rig.reps[i].addr
		rig.reps[i].term()
		rig.reps[i] = rig.startReplica(addr)
		echo.roundTrip()
	}
	echo.finish()
	if got := c.SSH(tgt, 0, "echo after"); strings.TrimSpace(got.Stdout) != "after" {
		t.Errorf("after the rolling restart: %q", got.Stdout)
	}
}

// TestClusterRedisRestartsEmpty: Redis stops and comes back empty.
// Sessions, local and forwarded, go on; a local agent stays reachable
// through its replica meanwhile; the replicas refill the registry, and
// every ID has one holder, the right one.
func TestClusterRedisRestartsEmpty(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 2, false)
	c := sshtest.New(t)
	startAgent(t, rig.relay(0), "on-zero", c)
	startAgent(t, rig.relay(1), "on-one", c)
	local := startEcho(t, c, rig.relay(0).target("on-zero"))
	forwarded := startEcho(t, c, rig.relay(1).target("on-zero"))

	rig.redis.Stop()
	local.roundTrip()
	forwarded.roundTrip()
	c.SSH(rig.relay(0).target("on-zero"), 0, "true")

	rig.redis.Restart()
	waitFor(t, "the registry refilled", func() bool { return rig.owner("on-zero") == 0 && rig.owner("on-one") == 1 })
	c.SSH(rig.relay(1).target("on-zero"), 0, "true")
	c.SSH(rig.relay(0).target("on-one"), 0, "true")
	local.roundTrip()
	forwarded.finish()
	local.finish()
	for i := range rig.reps {
		if n := metric(t, rig.relay(i).HTTP, "converge_agents_connected"); n != 1 {
			t.Errorf("replica %d holds %v agents, want 1", i, n)
		}
	}
}

// TestClusterRaceForOneID: two agents asking for one ID at once on two
// replicas: exactly one gets it, the other is refused.
func TestClusterRaceForOneID(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 2, false)
	type result struct {
		i   int
		err error
	}
	registered := make(chan int, 2)
	ended := make(chan result, 2)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range 2 {
		a, err := agent.New(agent.Config{Server: rig.relay(i).URL, ID: "contested", Dir: t.TempDir(),
			AuthorizedKeys: sshtest.New(t).PublicKey, Out: &syncBuffer{}, Logger: testLogger(t).With("side", fmt.Sprint("agent-", i)),
			OnRegistered: func() { registered <- i }})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); ended <- result{i, a.Run(ctx)} }()
	}
	winner := <-registered
	select {
	case r := <-ended:
		if r.i == winner || r.err == nil || !strings.Contains(r.err.Error(), "already used") {
			t.Fatalf("agent %d ended with %v; want the other of %d refused with 'already used'", r.i, r.err, winner)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the losing agent did not stop")
	}
	select {
	case i := <-registered:
		t.Fatalf("agent %d registered too", i)
	default:
	}
}

// TestClusterRestartRace is the restart race of issue 11 in a cluster:
// Redis restarts empty while the agent's network is away, and a rogue
// retrying the ID every 50 ms on another replica gets it first. The real
// agent, back with its secret, takes the ID from the rogue; the rogue is
// refused from then on, connected or reserved; ssh with the real host
// key reaches the real agent through either replica.
func TestClusterRestartRace(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 2, false)
	p := newProxy(t, rig.reps[0].addr) // the agent's network
	c := sshtest.New(t)
	a := startAgent(t, viaProxy(p), "victim", c)
	c.SSH(rig.relay(1).target("victim"), 0, "true")

	p.Retarget(deadAddr(t))
	p.Cut()
	waitFor(t, "replica 0 to notice the agent left", func() bool { return metric(t, rig.relay(0).HTTP, "converge_agents_connected") == 0 })
	rig.redis.Restart()
	rg := startRogue(t, rig.relay(1).URL, "victim")
	waitFor(t, "the rogue to get the ID", func() bool { return rg.snapshot().wins > 0 })
	p.Retarget(rig.reps[0].addr)
	waitFor(t, "the real agent to take its ID back", func() bool { return rg.snapshot().replaced > 0 })
	refusedSaying := func(refusal string) func() bool {
		n := rg.snapshot().refused
		return func() bool {
			s := rg.snapshot()
			return !s.holding && s.refused > n+3 && strings.Contains(s.lastRefusal, refusal)
		}
	}
	waitFor(t, "the rogue refused while the real agent holds the ID", refusedSaying("already used"))
	wins := rg.snapshot().wins
	for i := range rig.reps {
		if got := c.SSH(rig.relay(i).target("victim"), 0, "echo real"); strings.TrimSpace(got.Stdout) != "real" {
			t.Fatalf("ssh via replica %d: %q, want real", i, got.Stdout)
		}
	}
	p.Retarget(deadAddr(t))
	p.Cut()
	waitFor(t, "the rogue refused while the ID is reserved for the agent", refusedSaying("reserved"))
	p.Retarget(rig.reps[0].addr)
	waitFor(t, "the rogue refused once the agent is back", refusedSaying("already used"))
	if s := rg.snapshot(); s.wins != wins {
		t.Errorf("the rogue got the ID %d more times after the real agent took it back", s.wins-wins)
	}
	if n := strings.Count(a.Out.String(), "registered as"); n != 1 {
		t.Errorf("agent printed its instructions %d times, want once", n)
	}
}

// TestHAProxyOverwritesForwardedHeaders: replicas believe HAProxy's
// X-Forwarded-* headers, so deploy/haproxy.cfg must set or delete the ones
// a client sent (issue 18, finding 9); otherwise the usage page's
// commands point at the attacker's host.
func TestHAProxyOverwritesForwardedHeaders(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 1, true)
	req, err := http.NewRequest("GET", rig.lb.relay().HTTP+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Prefix", "/evilprefix")
	resp, err := quickClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	page := string(body)
	for _, bad := range []string{"evil.example", "/evilprefix", "wss://"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page through HAProxy holds %q from the client's own X-Forwarded-* headers", bad)
		}
	}
	if !strings.Contains(page, rig.lb.addr) {
		t.Errorf("the page through HAProxy does not name HAProxy's address %s:\n%.600s", rig.lb.addr, page)
	}
}
