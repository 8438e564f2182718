package bench

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// Targets for the relay's own CPU per MiB moved (issue 13): at 0 ms, and
// at most 1.5 times that at an added round trip, where transfers run
// slower and in smaller pieces.
const (
	convergeTarget = 0.7 // ms per MiB
	wsproxyTarget  = 1.0
	slowFactor     = 1.5
)

// relayCPU sums the CPU time converge and wsproxy spent on transfers
// through the relay, and the MiB those transfers moved.
type relayCPU struct {
	converge, wsproxy time.Duration
	mib               float64
}

func (r *relayCPU) add(c cost, size int64) {
	r.converge += c.server
	r.wsproxy += c.proxy
	r.mib += float64(size) / (1 << 20)
}

func (r relayCPU) perMiB(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond) / max(r.mib, 1e-9)
}

// addRelayCPU adds the section of relay CPU rows, with their targets, for
// the measurements at each round trip. first says the 0 ms measurement
// ran on the agent's first session (dialled back), as the main table's
// does: its rows say so and take the first session's targets (issue 24).
func addRelayCPU(tb *table, rtts []time.Duration, rs []relayCPU, first bool) {
	s := tb.add("Relay CPU: converge's and wsproxy's CPU time per MiB moved (sftp get, sftp put, ssh cat through the relay, wsproxy's default stream)",
		"ms per MiB", "", "")
	for i, rtt := range rtts {
		r := rs[i]
		f, cond := 1.0, ""
		if rtt > 0 {
			f, cond = slowFactor, fmt.Sprintf(" (%.1f× the 0 ms target)", slowFactor)
		}
		c, w := r.perMiB(r.converge), r.perMiB(r.wsproxy)
		ct, wt, label := convergeTarget*f, wsproxyTarget*f, msLabel(rtt)
		if first && rtt == 0 {
			ct, wt, label = firstConvergeTarget, firstWsproxyTarget, label+", the agent's first session"
		}
		s.add(row{what: "converge, " + label, a: fmt.Sprintf("%.3f ms", c), comp: "-",
			target: fmt.Sprintf("<= %.2f ms%s", ct, cond), verdict: verdict(c <= ct)})
		s.add(row{what: "wsproxy, " + label, a: fmt.Sprintf("%.3f ms", w), comp: "-",
			target: fmt.Sprintf("<= %.2f ms%s", wt, cond), verdict: verdict(w <= wt)})
	}
	tb.notes = append(tb.notes, "Relay CPU: user + system time of the converge and wsproxy processes (from /proc, 10 ms ticks) over every relay transfer of the throughput rows, divided by the MiB moved.")
}

// TestBenchRelayCPU measures only the relay CPU rows (make bench-relay,
// or go test -run TestBenchRelayCPU -bench-table), for working on them
// without the whole table. Its sessions take the agent's idle stream, as
// every connection after an agent's first does.
func TestBenchRelayCPU(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark rows run with -bench-table")
	}
	cfg := config{size: int64(*flagSize) << 20, reps: *flagReps, rtt: *flagRTT}
	tb := &table{header: machine()}
	srv := startServer(t)
	c := sshtest.New(t)
	ag := startAgent(t, srv, "bench", c)
	file := filepath.Join(ag.Dir, "big.bin")
	writeRandom(t, file, cfg.size)
	rtts := []time.Duration{0}
	if cfg.rtt > 0 {
		rtts = append(rtts, cfg.rtt)
	}
	// The first session to an agent is dialled back (the agent holds no
	// idle stream before its first client): measured on an agent of its
	// own, at 0 ms, before anything else touches it.
	firstAg := startAgent(t, srv, "first", c)
	writeRandom(t, filepath.Join(firstAg.Dir, "big.bin"), cfg.size)
	first := openSession(t, c, sshtest.Target{User: srv.User, Alias: "first", ProxyCommand: bin("wsproxy") + " ws://" + srv.Addr + "/client/first"})
	first.server = srv.cmd.Process.Pid
	firstCPU := measureRelayCPU(t, first, cfg, firstAg.Dir, "first session, 0 ms")
	// Most connections take the idle stream the agent keeps once it has
	// had a client; so do the measured sessions.
	warm := sshtest.Target{User: srv.User, Alias: "bench", ProxyCommand: bin("wsproxy") + " ws://" + srv.Addr + "/client/bench"}
	if _, err := connect(c, warm); err != nil {
		t.Fatal(err)
	}
	var rs []relayCPU
	for _, rtt := range rtts {
		waitPooled(t, srv)
		addr := srv.Addr
		if rtt > 0 {
			addr = startDelayProxy(t, srv.Addr, rtt/2).Addr()
		}
		relay := sshtest.Target{User: srv.User, Alias: "bench", ProxyCommand: bin("wsproxy") + " ws://" + addr + "/client/bench"}
		x := openSession(t, c, relay)
		x.server = srv.cmd.Process.Pid
		rs = append(rs, measureRelayCPU(t, x, cfg, ag.Dir, msLabel(rtt)))
	}
	addRelayCPU(tb, rtts, rs, false)
	addFirstSessionCPU(tb, firstCPU)
	for _, series := range []string{`converge_agent_streams_total{source="pool"}`, `converge_stream_legs_total{agent="raw",client="raw"}`} {
		v, err := serverMetric(srv, series)
		t.Logf("%s %v (%v)", series, v, err)
	}
	fmt.Print("\n" + tb.String())
}

// measureRelayCPU runs the transfers over session x (files in the agent's
// dir) and returns the relay's CPU for them; what labels the log lines.
func measureRelayCPU(t *testing.T, x *session, cfg config, dir, what string) relayCPU {
	t.Helper()
	var r relayCPU
	for _, op := range transfers(cfg.size, dir) {
		var o relayCPU
		for range cfg.reps {
			_, cs, err := x.withCPU(func() (time.Duration, error) { return op.do(x) })
			if err != nil {
				t.Fatal(err)
			}
			o.add(cs, cfg.size)
		}
		t.Logf("%s %s: converge %.2f ms/MiB, wsproxy %.2f ms/MiB", what, op.name, o.perMiB(o.converge), o.perMiB(o.wsproxy))
		r.converge, r.wsproxy, r.mib = r.converge+o.converge, r.wsproxy+o.wsproxy, r.mib+o.mib
	}
	t.Logf("%s: converge %.2f ms/MiB, wsproxy %.2f ms/MiB", what, r.perMiB(r.converge), r.perMiB(r.wsproxy))
	return r
}

// Targets of the first session to an agent (issue 24): as cheap as one on
// a pooled stream.
const (
	firstConvergeTarget = 0.6 // ms per MiB
	firstWsproxyTarget  = 0.9
)

// addFirstSessionCPU adds the rows of the relay's CPU on the first
// session to an agent, which the agent dials back for.
func addFirstSessionCPU(tb *table, r relayCPU) {
	s := tb.add("Relay CPU on the first session to an agent (dialled back), 0 ms", "ms per MiB", "", "")
	c, w := r.perMiB(r.converge), r.perMiB(r.wsproxy)
	s.add(row{what: "converge, first session", a: fmt.Sprintf("%.3f ms", c), comp: "-",
		target: fmt.Sprintf("<= %.2f ms", firstConvergeTarget), verdict: verdict(c <= firstConvergeTarget)})
	s.add(row{what: "wsproxy, first session", a: fmt.Sprintf("%.3f ms", w), comp: "-",
		target: fmt.Sprintf("<= %.2f ms", firstWsproxyTarget), verdict: verdict(w <= firstWsproxyTarget)})
}

// waitPooled waits until srv holds an idle stream of the agent's pool.
func waitPooled(t *testing.T, srv *serverProc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if v, err := serverMetric(srv, "converge_pooled_streams_idle"); err == nil && v >= 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no idle stream in the agent's pool\n%s", srv.log.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// transfers are the throughput rows' operations on a file of size bytes
// in the agent's directory dir.
func transfers(size int64, dir string) []struct {
	name string
	do   func(*session) (time.Duration, error)
} {
	mib := fmt.Sprintf("%d MiB", size>>20)
	return []struct {
		name string
		do   func(*session) (time.Duration, error)
	}{
		{"sftp get " + mib, func(x *session) (time.Duration, error) { return x.sftpGet("big.bin", size) }},
		{"sftp put " + mib, func(x *session) (time.Duration, error) {
			return x.sftpPut(filepath.Join(dir, "big.bin"), "up.bin", filepath.Join(dir, "up.bin"), size)
		}},
		{"ssh cat " + mib, func(x *session) (time.Duration, error) { return x.sshCat("big.bin", size) }},
	}
}
