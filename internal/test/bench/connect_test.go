package bench

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// maxConnectOver is the target of the connect rows (issue 24): a fresh
// `ssh host true` through the relay costs at most this much more than
// direct, no round trip of its own (the client's request leaves with its
// first bytes, see internal/leg's Early), only the relay's work.
const maxConnectOver = 15 * time.Millisecond

// connectReps is how many times each connect measurement runs: at least
// five, since one costs under a second.
func connectReps(reps int) int { return max(reps, 5) }

// paths returns the relay and direct targets of agent ag (registered as
// id with srv) at an added round trip of rtt: delay proxies in front of
// the server and of the agent's direct listener, or none at 0. relayAddr
// is where wsproxy connects.
func paths(t *testing.T, srv *serverProc, ag *benchAgent, id string, rtt time.Duration) (relayAddr string, relay, direct sshtest.Target) {
	relayAddr, directAddr := srv.Addr, ag.Direct
	if rtt > 0 {
		relayAddr = startDelayProxy(t, srv.Addr, rtt/2).Addr()
		directAddr = startDelayProxy(t, ag.Direct, rtt/2).Addr()
	}
	relay = sshtest.Target{User: srv.User, Alias: id, ProxyCommand: bin("wsproxy") + " ws://" + relayAddr + "/client/" + id}
	direct = sshtest.Target{User: srv.User, Alias: id, Port: port(t, directAddr)}
	return relayAddr, relay, direct
}

// connectRow times a fresh `ssh host true` through relay and direct,
// alternating, and adds the medians with the target to s.
func connectRow(t *testing.T, s *section, what string, reps int, c *sshtest.Client, relay, direct sshtest.Target) {
	t.Helper()
	a, b := pair(t, connectReps(reps), func() (time.Duration, error) { return connect(c, relay) }, func() (time.Duration, error) { return connect(c, direct) })
	s.add(row{what: what, a: ms(a), b: ms(b), comp: diff(a - b), target: fmt.Sprintf("<= %+d ms", maxConnectOver.Milliseconds()), verdict: verdict(a-b <= maxConnectOver)})
	t.Logf("%s: relay %s, direct %s, %s", what, ms(a), ms(b), diff(a-b))
}

// halfway measures connecting with the server halfway between the client
// and an agent of its own: each leg, client to server and server to
// agent, has half of cfg.rtt, and the direct path all of it. SSH's own
// round trips then cost both paths the same, and what is left is the
// relay's: the client's upgrade, and whatever the agent's stream costs
// on its leg.
//
// The rows: the first connection to a fresh agent (the agent dials back
// for it and only then opens an idle stream for the next), the usual
// case (a client spliced to an idle stream), and the same against a
// converge with --stream-pool 0 (a dial-back for every client).
func halfway(t *testing.T, tb *table, cfg config, c *sshtest.Client, srv *serverProc) {
	s := tb.add(fmt.Sprintf("%s round trip with the server halfway: relay (client %s from converge, converge %s from the agent) vs direct (%s)",
		msLabel(cfg.rtt), msLabel(cfg.rtt/2), msLabel(cfg.rtt/2), msLabel(cfg.rtt)), "relay", "direct", "relay-direct")
	relay, direct := halfwayPaths(t, cfg.rtt, c, srv, "far")
	first, err := connect(c, relay)
	if err != nil {
		t.Fatal(err)
	}
	s.add(row{what: "first `ssh host true` to a fresh agent, one run", a: ms(first), b: "-", comp: "-"})
	t.Logf("halfway: first connection %s", ms(first))
	connectRow(t, s, "connect: fresh `ssh host true`", cfg.reps, c, relay, direct)

	nopool := startServer(t, "--stream-pool", "0")
	relay, direct = halfwayPaths(t, cfg.rtt, c, nopool, "far-nopool")
	connectRow(t, s, "  the same, converge --stream-pool 0", cfg.reps, c, relay, direct)
}

// halfwayPaths registers agent id with srv across a delay proxy of half
// of rtt, and returns the relay and direct targets for it: the client
// half of rtt from srv, direct all of it from the agent.
func halfwayPaths(t *testing.T, rtt time.Duration, c *sshtest.Client, srv *serverProc, id string) (relay, direct sshtest.Target) {
	leg := rtt / 4 // one way, on each leg
	ag := startAgentVia(t, "ws://"+startDelayProxy(t, srv.Addr, leg).Addr(), srv.User, id, c)
	relay = sshtest.Target{User: srv.User, Alias: id, ProxyCommand: bin("wsproxy") + " ws://" + startDelayProxy(t, srv.Addr, leg).Addr() + "/client/" + id}
	direct = sshtest.Target{User: srv.User, Alias: id, Port: port(t, startDelayProxy(t, ag.Direct, rtt/2).Addr())}
	return relay, direct
}

// TestBenchConnect prints only the connect rows: a fresh `ssh host true`
// through the relay against direct at 0 ms and at -bench-rtt, and with
// the server halfway.
func TestBenchConnect(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table (make bench-connect)")
	}
	start := time.Now()
	tb := &table{header: machine()}
	srv := startServer(t)
	c := sshtest.New(t)
	ag := startAgent(t, srv, "bench", c)
	s := tb.add("Connect: a fresh `ssh host true`, relay (ssh → wsproxy → converge → agent) vs direct (ssh → TCP → same agent)", "relay", "direct", "relay-direct")
	rtts := []time.Duration{0}
	if *flagRTT > 0 {
		rtts = append(rtts, *flagRTT)
	}
	for _, rtt := range rtts {
		_, relay, direct := paths(t, srv, ag, "bench", rtt)
		connectRow(t, s, msLabel(rtt)+" added round trip", *flagReps, c, relay, direct)
	}
	if *flagRTT > 0 {
		wssRows(t, s, *flagReps, c, srv, ag, "bench", *flagRTT)
		halfway(t, tb, config{rtt: *flagRTT, reps: *flagReps}, c, srv)
	}
	tb.notes = append(tb.notes, fmt.Sprintf("Each connect row is the median of %d runs, relay and direct alternating. The whole run took %v; load average at the end %s.",
		connectReps(*flagReps), time.Since(start).Round(time.Second), loadavg()))
	out := tb.String()
	fmt.Print("\n" + out)
	if *flagOut != "" {
		if err := os.WriteFile(*flagOut, []byte(out), 0o644); err != nil {
			t.Error(err)
		}
	}
}
