package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// config of one benchmark run.
type config struct {
	size      int64         // bytes of the transferred file
	reps      int           // runs of each throughput measurement
	echo      int           // echo round trips at 0 ms
	rtt       time.Duration // added round trip of the second pass; 0 skips it
	scale     scaleConfig   // many agents: memory, lookups, restarts; 0 agents skips them
	streams   int           // concurrent streams of the many-streams rows; 0 skips them
	observers int           // OpenSSH observers of the shared-shell memory row; 0 skips the shared-shell rows
	ciphers   []string      // ciphers to compare (direct, ssh cat); none skips
	cluster   bool          // measure forwarding between replicas and the Redis registry
}

// TestBenchTable is `make bench`: the full table, printed to stdout.
func TestBenchTable(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table (make bench)")
	}
	start := time.Now()
	cfg := config{
		size:      int64(*flagSize) << 20,
		reps:      *flagReps,
		echo:      *flagEcho,
		rtt:       *flagRTT,
		cluster:   *flagCluster,
		scale:     scaleConfig{agents: *flagAgents, real: *flagRealAgents, window: time.Second, outage: *flagOutage},
		streams:   *flagStreams,
		observers: *flagObservers,
	}
	if *flagCipher {
		cfg.ciphers = []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"}
	}
	tb := run(t, cfg)
	tb.notes = append(tb.notes, fmt.Sprintf("The whole run took %v; load average at the end %s.", time.Since(start).Round(time.Second), loadavg()))
	out := tb.String()
	fmt.Print("\n" + out)
	if *flagOut != "" {
		if err := os.WriteFile(*flagOut, []byte(out), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// TestBenchAgents prints only the many-agents part of the table: server
// memory per idle agent, lookups, and the restart herd.
func TestBenchAgents(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table (make bench-agents)")
	}
	if *flagAgents <= 0 {
		t.Skip("no agents: -bench-agents is 0")
	}
	start := time.Now()
	tb := &table{header: machine()}
	sc := scaleConfig{agents: *flagAgents, real: *flagRealAgents, window: time.Second, outage: *flagOutage}
	scale(t, tb, sc, sshtest.New(t))
	herdTokens(t, tb, sc)
	tb.notes = append(tb.notes, fmt.Sprintf("The whole run took %v; load average at the end %s.", time.Since(start).Round(time.Second), loadavg()))
	out := tb.String()
	fmt.Print("\n" + out)
	if *flagOut != "" {
		if err := os.WriteFile(*flagOut, []byte(out), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// TestBenchSmoke runs the whole harness on a tiny file, a small added
// round trip and a few agents, so the benchmark keeps working. It checks
// that every measurement produced a number, not how fast anything is.
func TestBenchSmoke(t *testing.T) {
	if *flagTable {
		t.Skip("the full table runs instead")
	}
	tb := run(t, config{
		size:      1 << 20,
		reps:      1,
		echo:      5,
		rtt:       4 * time.Millisecond,
		scale:     scaleConfig{agents: 20, real: 3, window: 200 * time.Millisecond, outage: 500 * time.Millisecond},
		ciphers:   []string{"aes128-gcm@openssh.com"},
		cluster:   true,
		observers: 3,
	})
	out := tb.String()
	t.Log("\n" + out)
	var titles []string
	for _, s := range tb.sections {
		titles = append(titles, s.title)
		for _, r := range s.rows {
			if r.a == "" || r.comp == "" || strings.Contains(r.a+r.b+r.comp, "NaN") || strings.Contains(r.a+r.b+r.comp, "Inf") {
				t.Errorf("section %q, row %q: missing or bad value: %+v", s.title, r.what, r)
			}
		}
	}
	for _, want := range []string{"0 ms", "4 ms", "Ciphers", "Server memory", "Lookups", "Restart at once", "Restart after", "Cluster", "Sentinel failover", "Shared shell"} {
		if !strings.Contains(strings.Join(titles, "\n"), want) {
			t.Errorf("no section about %q in:\n%s", want, out)
		}
	}
}

// run measures everything cfg asks for and returns the table.
func run(t *testing.T, cfg config) *table {
	tb := &table{header: machine()}
	tb.header = append(tb.header, fmt.Sprintf("File %d MiB; each throughput is the median of %d runs, relay and direct alternating.", cfg.size>>20, cfg.reps))

	srv := startServer(t)
	c := sshtest.New(t)
	ag := startAgent(t, srv, "bench", c)
	file := filepath.Join(ag.Dir, "big.bin")
	writeRandom(t, file, cfg.size)
	resume := supportsNoResume()

	rtts := []time.Duration{0}
	if cfg.rtt > 0 {
		rtts = append(rtts, cfg.rtt)
	}
	var relayCPUs []relayCPU
	var firstCPU, pooledCPU opsCPU // at 0 ms
	for _, rtt := range rtts {
		relayAddr, relay, direct := paths(t, srv, ag, "bench", rtt)
		t.Logf("measuring at %s added round trip", msLabel(rtt))
		s := tb.add(fmt.Sprintf("%s added round trip: relay (ssh → wsproxy → converge → agent) vs direct (ssh → TCP → same agent)", msLabel(rtt)),
			"relay", "direct", "relay/direct")
		cs := tb.add(fmt.Sprintf("%s added round trip: CPU time per MiB moved, all processes on the path (user + system, summed over the runs)", msLabel(rtt)),
			"relay", "direct", "relay/direct")
		own := compare(t, s, cs, cfg, c, srv, ag, relay, direct, rtt)
		relayCPUs = append(relayCPUs, own.sum(nil))
		if rtt == 0 {
			firstCPU = own
		}
		if resume {
			plain := relay
			plain.ProxyCommand = bin("wsproxy") + " --no-resume ws://" + relayAddr + "/client/bench"
			s := tb.add(fmt.Sprintf("%s added round trip: relay with resumable streams (wsproxy default) vs --no-resume", msLabel(rtt)),
				"resume", "no-resume", "resume/no")
			on := compareResume(t, s, cfg, c, srv, relay, plain, rtt)
			if rtt == 0 {
				pooledCPU = on
			}
		}
	}
	addRelayCPU(tb, rtts, relayCPUs, true) // the 0 ms session is the agent's first: dialled back
	if pooledCPU != nil {
		addFirstVsPooled(tb, firstCPU, pooledCPU)
	}
	stepOverhead(t, tb, cfg.reps, srv)
	if !resume {
		tb.notes = append(tb.notes, "This wsproxy has no --no-resume flag, so there are no resume on/off rows.")
	}

	if cfg.rtt > 0 {
		halfway(t, tb, cfg, c, srv)
	}
	if len(cfg.ciphers) > 0 {
		direct := sshtest.Target{User: srv.User, Alias: "bench", Port: port(t, ag.Direct)}
		ciphers(t, tb, cfg, c, direct)
	}
	registrations(t, tb)
	if cfg.scale.agents > 0 {
		scale(t, tb, cfg.scale, c)
		herdTokens(t, tb, cfg.scale)
	}
	if cfg.cluster {
		cluster(t, tb, cfg, c)
	}
	if cfg.streams > 0 {
		manyStreams(t, tb, cfg.streams)
	}
	if cfg.observers > 0 {
		together(t, tb, srv, cfg.echo, cfg.observers)
	}
	tb.notes = append(tb.notes,
		"relay = OpenSSH client → wsproxy (ProxyCommand) → converge (its own process) → the agent's stream (dialled back, or from its pool; raw stream legs both sides, spliced in the kernel, except with --no-resume: WebSockets) → agent (in the harness process); direct = OpenSSH client → loopback TCP → the same agent's SSH server (agent.Serve).",
		"Throughput: sftp get/put and ssh cat run over an already established SSH connection (OpenSSH ControlMaster), so they time the transfer, not the key exchange; the connect row times a whole fresh `ssh host true`. sftp get writes to a local file, sftp put to a file in the agent's directory, ssh cat to a pipe the harness counts.",
		"Echo: one `ssh host cat` session, single 31-byte lines written and read back one at a time; overhead = relay median - direct median.",
		"CPU: user + system time of converge and wsproxy (from /proc), of the ssh master and the ssh/sftp clients, and of the harness process, which runs the agent. Everything runs on this one machine: where its cores are busy (see the load average), a transfer is bound by CPU and the relay/direct throughput ratio tends to direct CPU / relay CPU; with the relay on its own machine, as deployed, its CPU is not taken from ssh and the agent.",
		"connect: the direct path is the slower one at 0 ms: OpenSSH turns Nagle's algorithm off only after the key exchange, so over TCP two handshake messages each wait about 40 ms for a delayed ACK (seen with strace -r); through a ProxyCommand pipe they do not. tcptows users see the TCP figure.",
		"Added round trip: a userland proxy holds each chunk for half the round trip in each direction without limiting bandwidth, and connects onward a round trip after accepting (what a TCP handshake costs), between the client and converge (relay) and between the client and the agent's listener (direct); the agent-to-server link is not delayed, except in the halfway section, where converge sits between client and agent with half the round trip on each side. The proxies run in the harness process, so at the added round trip its CPU (the agent column) includes them, on both paths.",
		"Connect target: at most 15 ms more than direct: wsproxy sends its raw stream request with the stream's first bytes, so the upgrade costs no round trip of its own (over wss://, TLS's handshake adds one). The halfway section's first row is an agent's first connection, dialled back; later ones take the idle stream the agent keeps once it has had a client (--stream-pool).",
	)
	return tb
}

// compare fills s with relay vs direct measurements and returns the
// relay's own CPU over each transfer.
func compare(t *testing.T, s, cs *section, cfg config, c *sshtest.Client, srv *serverProc, ag *benchAgent, relay, direct sshtest.Target, rtt time.Duration) opsCPU {
	rs, ds := openSession(t, c, relay), openSession(t, c, direct)
	rs.server = srv.cmd.Process.Pid
	size := cfg.size
	own := opsCPU{}
	for _, op := range transfers(size, ag.Dir) {
		var rc, dc cost
		a, b := pair(t, cfg.reps, costed(rs, op.do, &rc), costed(ds, op.do, &dc))
		own[op.name] = relayOf(rc, size*int64(cfg.reps))
		r := speedRatio(a, b)
		minRatio := 0.8 // issue 13; at 0 ms, where the relay's CPU shows, 0.85 (issue 24)
		if rtt == 0 {
			minRatio = 0.85
		}
		s.add(row{what: op.name, a: mibps(size, a), b: mibps(size, b), comp: fmt.Sprintf("%.2f", r), target: fmt.Sprintf(">= %.2f (aim 0.9)", minRatio), verdict: verdict(r >= minRatio)})
		t.Logf("%s %s: relay %s, direct %s, ratio %.2f", msLabel(rtt), op.name, mibps(size, a), mibps(size, b), r)

		per := perMiB(cfg)
		cr := float64(rc.total()) / float64(max(dc.total(), 1))
		cs.add(row{what: op.name, a: per(rc.total()), b: per(dc.total()), comp: fmt.Sprintf("%.2f", cr)})
		cs.add(row{what: "  converge + wsproxy", a: per(rc.server + rc.proxy), b: "-", comp: "-"})
		t.Logf("%s %s CPU/MiB: relay %s (converge %s, wsproxy %s, ssh %s, agent %s), direct %s (ssh %s, agent %s)", msLabel(rtt), op.name,
			per(rc.total()), per(rc.server), per(rc.proxy), per(rc.ssh), per(rc.agent), per(dc.total()), per(dc.ssh), per(dc.agent))
	}

	n := cfg.echo
	if rtt > 0 {
		n = max(5, min(n, int(2*time.Second/rtt))) // about 2 s per path
	}
	re, err := rs.echo(n)
	if err != nil {
		t.Fatalf("relay echo: %v", err)
	}
	de, err := ds.echo(n)
	if err != nil {
		t.Fatalf("direct echo: %v", err)
	}
	rm, dm := median(re), median(de)
	over := rm - dm
	target, v := "", ""
	if rtt == 0 {
		target, v = "< 1 ms", verdict(over < time.Millisecond)
	}
	s.add(row{what: fmt.Sprintf("echo round trip, median of %d", n), a: ms(rm), b: ms(dm), comp: diff(over), target: target, verdict: v})
	rp, dp := percentile(re, 99), percentile(de, 99)
	s.add(row{what: "echo round trip, p99", a: ms(rp), b: ms(dp), comp: diff(rp - dp)})
	t.Logf("%s echo: relay %s (p99 %s), direct %s (p99 %s)", msLabel(rtt), ms(rm), ms(rp), ms(dm), ms(dp))

	connectRow(t, s, "connect: fresh `ssh host true`", cfg.reps, c, relay, direct)
	return own
}

// compareResume fills s with relay throughput with and without resumable
// streams, and returns the relay's own CPU over each transfer with them.
func compareResume(t *testing.T, s *section, cfg config, c *sshtest.Client, srv *serverProc, on, off sshtest.Target, rtt time.Duration) opsCPU {
	ons, offs := openSession(t, c, on), openSession(t, c, off)
	ons.server, offs.server = srv.cmd.Process.Pid, srv.cmd.Process.Pid
	size := cfg.size
	mib := fmt.Sprintf("%d MiB", size>>20)
	own := opsCPU{}
	for _, op := range []struct {
		name string
		do   func(*session) (time.Duration, error)
	}{
		{"sftp get " + mib, func(x *session) (time.Duration, error) { return x.sftpGet("big.bin", size) }},
		{"ssh cat " + mib, func(x *session) (time.Duration, error) { return x.sshCat("big.bin", size) }},
	} {
		var onc, offc cost
		a, b := pair(t, cfg.reps, costed(ons, op.do, &onc), costed(offs, op.do, &offc))
		own[op.name] = relayOf(onc, size*int64(cfg.reps))
		r := speedRatio(a, b)
		s.add(row{what: op.name, a: mibps(size, a), b: mibps(size, b), comp: fmt.Sprintf("%.2f", r)})
		per := perMiB(cfg)
		s.add(row{what: "  CPU per MiB, whole path", a: per(onc.total()), b: per(offc.total()), comp: fmt.Sprintf("%.2f", float64(onc.total())/float64(max(offc.total(), 1)))})
		t.Logf("%s resume %s: on %s, off %s, ratio %.2f; CPU/MiB on %s (wsproxy %s, agent %s), off %s (wsproxy %s, agent %s)", msLabel(rtt), op.name, mibps(size, a), mibps(size, b), r,
			per(onc.total()), per(onc.proxy), per(onc.agent), per(offc.total()), per(offc.proxy), per(offc.agent))
	}
	a, b := pair(t, cfg.reps, func() (time.Duration, error) { return connect(c, on) }, func() (time.Duration, error) { return connect(c, off) })
	s.add(row{what: "connect: fresh `ssh host true`", a: ms(a), b: ms(b), comp: diff(a - b)})
	return own
}

// costed returns a measurement of do on x that adds the CPU time it cost
// to sum.
func costed(x *session, do func(*session) (time.Duration, error), sum *cost) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		d, c, err := x.withCPU(func() (time.Duration, error) { return do(x) })
		*sum = sum.add(c)
		return d, err
	}
}

// perMiB formats CPU time summed over cfg.reps transfers as time per MiB.
func perMiB(cfg config) func(time.Duration) string {
	mibs := float64(cfg.reps) * float64(cfg.size) / (1 << 20)
	return func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)/mibs) }
}

// pair runs a and b reps times each, alternating which goes first, and
// returns their median durations.
func pair(t *testing.T, reps int, a, b func() (time.Duration, error)) (time.Duration, time.Duration) {
	t.Helper()
	var as, bs []time.Duration
	for i := range reps {
		first, second, fs, ss := a, b, &as, &bs
		if i%2 == 1 {
			first, second, fs, ss = b, a, &bs, &as
		}
		for _, m := range []struct {
			f   func() (time.Duration, error)
			out *[]time.Duration
		}{{first, fs}, {second, ss}} {
			d, err := m.f()
			if err != nil {
				t.Fatal(err)
			}
			*m.out = append(*m.out, d)
		}
	}
	return median(as), median(bs)
}

// ciphers measures ssh cat straight to the agent with each cipher.
func ciphers(t *testing.T, tb *table, cfg config, c *sshtest.Client, direct sshtest.Target) {
	def, err := defaultCipher(c, direct)
	if err != nil {
		t.Fatal(err)
	}
	s := tb.add("Ciphers: ssh cat straight to the agent (0 ms), OpenSSH client -c CIPHER", "throughput", "", "vs first")
	var first time.Duration
	for i, name := range cfg.ciphers {
		x := openSession(t, c, direct, "-c", name)
		var ds []time.Duration
		for range cfg.reps {
			d, err := x.sshCat("big.bin", cfg.size)
			if err != nil {
				t.Fatalf("cipher %s: %v", name, err)
			}
			ds = append(ds, d)
		}
		m := median(ds)
		if i == 0 {
			first = m
		}
		s.add(row{what: name, a: mibps(cfg.size, m), comp: fmt.Sprintf("%.2f", speedRatio(m, first))})
		t.Logf("cipher %s: %s", name, mibps(cfg.size, m))
	}
	tb.notes = append(tb.notes, "With no -c, this OpenSSH client and the agent negotiate "+def+" (the client takes its first preference the agent supports).")
}

func writeRandom(t *testing.T, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func port(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// supportsNoResume reports whether this wsproxy can turn resumable
// streams off.
func supportsNoResume() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin("wsproxy"), "--help").CombinedOutput()
	return strings.Contains(string(out), "no-resume")
}
