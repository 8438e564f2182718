package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/loadgen"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// Shape of the many-agents measurements.
const (
	agentsPerHost   = 50                     // synthetic agents per source address: half the default per-address limit
	lookupWorkers   = 8                      // concurrent keep-alive clients looking up IDs
	lookupReps      = 3                      // runs of each lookup rate, in turns; the table shows the median
	probeEvery      = 5 * time.Millisecond   // client requests during the idle and herd windows
	herdTimeout     = 5 * time.Minute        // for all agents to come back
	settleTime      = 2 * time.Second        // before reading memory
	registerWindow  = 500                    // agents added at a time while connecting
	maxRestartTime  = 10 * time.Second       // target: all back within this of the new server listening
	maxHerdP99      = 100 * time.Millisecond // target: client requests' p99 during the herd
	maxIdleAgentKiB = 16                     // target (issue 24): server memory per idle agent at 10,000
)

// scaleConfig says how many agents and for how long.
type scaleConfig struct {
	agents int           // synthetic agents
	real   int           // real agents for the memory reference; 0 skips it
	window time.Duration // of each lookup run and of the idle client requests
	outage time.Duration // the server's downtime in the second restart
}

// scale connects sc.agents synthetic agents (internal/test/loadgen) from
// loopback addresses, agentsPerHost each, to a converge started with its
// default limits, and reports its memory per idle agent against real
// agents, lookups per second against a converge with one agent (measured
// in turns), and the herds after a kill and an immediate restart, and
// after a kill and an outage, against the same client requests while idle.
func scale(t *testing.T, tb *table, sc scaleConfig, c *sshtest.Client) {
	var ref realMemory
	if sc.real > 0 {
		ref = realAgentMemory(t, sc.real, c)
	}
	one, oneID := oneAgent(t)
	srv := startServer(t)
	f := startFleet(t, srv.URL(), hosts(sc.agents))
	defer f.stop(t)
	connectFleet(t, tb, srv, f, sc.agents, sc.real, ref)

	var ids, unknown []string
	for i := range 64 {
		ids = append(ids, loadgen.ID(fleetPrefix, i*7919%sc.agents)) // spread over the registry
		unknown = append(unknown, fmt.Sprintf("nobody-%05d", i))
	}
	r := lookupRates(t, "http://"+one.Addr, []string{oneID}, "http://"+srv.Addr, ids, unknown, sc.window)
	r.rows(tb, sc.agents, sc.window)

	p := startProbe(t, "http://"+srv.Addr, ids)
	idleFrom := time.Now()
	time.Sleep(sc.window) // the idle reference for the client requests (not a synchronisation)
	fast := herd(t, f, srv, 0)
	slow := herd(t, f, srv, sc.outage)
	samples := p.stop(t)
	idle := answered(samples, idleFrom, fast.mark)
	for _, h := range []*herdResult{&fast, &slow} {
		h.clients = answered(samples, h.listening, h.allBack)
	}
	t.Logf("client requests: %d idle, %d and %d during the herds", len(idle), len(fast.clients), len(slow.clients))
	fast.rows(tb.add(fmt.Sprintf("Restart at once: converge killed (SIGKILL) with %d agents connected and started again on the same address; a client request every %v on a new connection (GET /healthz and /client/ID alternating) during the herd vs while idle", sc.agents, probeEvery),
		"herd", "idle", "herd/idle"), idle)
	slow.rows(tb.add(fmt.Sprintf("Restart after %v down: the same, the new converge started %v after the old one was gone", sc.outage, sc.outage),
		"herd", "idle", "herd/idle"), idle)
	tb.notes = append(tb.notes,
		fmt.Sprintf("Synthetic agents (internal/test/loadgen) speak the real control protocol (hello with a CI job's Info, a status, pings every 20 s, the agent's reconnect backoff and jitter) without an SSH server. They run in a process of their own at nice 10, so that the server and its clients get the CPU first, as if the agents were elsewhere, and dial from %d loopback addresses, %d each, to a converge with its default limits. Real agents (agent.New + Run, in the harness) all come from 127.0.0.1, to a converge with --max-agents-per-addr=-1. Memory is the VmRSS growth divided by the agents: user-space memory including garbage not yet collected, not kernel socket buffers.", len(hosts(sc.agents)), agentsPerHost),
		"Lookups and client requests run in processes of their own (the test binary started again). A plain GET of /client/ID makes the server look the ID up and refuse the request (426 without an upgrade, 404 unknown, which it also logs), so it times the lookup and the HTTP round trip without a stream. Clients, agents and servers share the machine's cores.",
		"Restart: the agents notice the kill at once (the kernel closes the sockets) and retry at a time spread evenly over 0-2 s, then after 250-500 ms, doubling to 2-4 s; back = first welcome from the new server, counted from the moment it logs that it listens; the CPU is that of the new converge process and of the agents' process, per agent. Client requests that found no server are not counted.",
	)
}

// oneAgent runs a converge with one synthetic agent (in this process),
// the reference of the lookup rates, and returns it and the agent's ID.
func oneAgent(t *testing.T) (*serverProc, string) {
	t.Helper()
	srv := startServer(t)
	f, err := loadgen.Start(loadgen.Config{Server: srv.URL(), Prefix: "ref"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	if err := f.Add(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.Wait(ctx, func(s loadgen.Stats) bool { return s.Connected == 1 }); err != nil {
		t.Fatalf("%v\n%s", err, srv.log.tail())
	}
	return srv, f.ID(0)
}

// connectFleet grows f to n agents, registerWindow at a time, and adds
// the memory rows: srv's memory per idle agent, against ref per real
// agent (zero: none).
func connectFleet(t *testing.T, tb *table, srv *serverProc, f *fleetProc, n, real int, ref realMemory) {
	before, err := srv.rssKiB()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("connecting %d synthetic agents", n)
	start := time.Now()
	for have := 0; have < n; {
		add := min(registerWindow, n-have)
		f.do(t, fmt.Sprintf("add %d", add))
		have += add
	}
	t.Logf("%d agents connected in %v", n, time.Since(start).Round(time.Millisecond))
	time.Sleep(settleTime) // let the connections settle into idleness (not a synchronisation)
	after, err := srv.rssKiB()
	if err != nil {
		t.Fatal(err)
	}
	per := float64(after-before) / float64(n)
	t.Logf("memory: %d KiB -> %d KiB with %d agents: %.1f KiB each", before, after, n, per)

	s := tb.add(fmt.Sprintf("Server memory: converge's resident set (VmRSS from /proc) per idle agent, %d synthetic agents vs %d real ones", n, real),
		fmt.Sprintf("%d synthetic", n), fmt.Sprintf("%d real", real), "ratio")
	s.add(row{what: "RSS before agents", a: fmt.Sprintf("%d KiB", before), comp: "-"})
	s.add(row{what: fmt.Sprintf("RSS with %d agents", n), a: fmt.Sprintf("%d KiB", after), comp: "-"})
	refCol, ratio := "-", "-"
	if ref.idle > 0 {
		refCol, ratio = fmt.Sprintf("%.1f KiB", ref.idle), fmt.Sprintf("%.2f", per/ref.idle)
	}
	s.add(row{what: "per idle agent", a: fmt.Sprintf("%.1f KiB", per), b: refCol, comp: ratio,
		target: fmt.Sprintf("<= %d KiB", maxIdleAgentKiB), verdict: verdict(per <= maxIdleAgentKiB)})
	if ref.pooled > 0 {
		s.add(row{what: "per agent once a client came (its stream pool: one idle stream)", a: "-", b: fmt.Sprintf("%.1f KiB", ref.pooled), comp: "-",
			target: "<= 64 KiB", verdict: verdict(ref.pooled <= 64)})
	}
}

// rates are lookup rates: on the server with one agent (found1,
// unknown1) and on the one with many (found, unknown).
type rates struct{ found1, unknown1, found, unknown float64 }

// lookupRates measures each rate lookupReps times, in turns, and keeps
// the medians.
func lookupRates(t *testing.T, oneBase string, oneIDs []string, base string, ids, unknown []string, window time.Duration) rates {
	var r [4][]float64
	for range lookupReps {
		r[0] = append(r[0], lookups(t, oneBase, oneIDs, http.StatusUpgradeRequired, window))
		r[1] = append(r[1], lookups(t, base, ids, http.StatusUpgradeRequired, window))
		r[2] = append(r[2], lookups(t, oneBase, unknown, http.StatusNotFound, window))
		r[3] = append(r[3], lookups(t, base, unknown, http.StatusNotFound, window))
	}
	med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	t.Logf("lookups/s: found %.0f with 1 agent, %.0f with many; unknown %.0f, %.0f", r[0], r[1], r[2], r[3])
	return rates{found1: med(r[0]), found: med(r[1]), unknown1: med(r[2]), unknown: med(r[3])}
}

// rows adds the lookup section.
func (r rates) rows(tb *table, n int, window time.Duration) {
	s := tb.add(fmt.Sprintf("Lookups while %d agents are connected: GET /client/ID from %d keep-alive clients, median of %d runs of %v, against another converge with 1 agent, in turns", n, lookupWorkers, lookupReps, window),
		fmt.Sprintf("%d agents", n), "1 agent", "ratio")
	for _, l := range []struct {
		what    string
		at, ref float64
	}{
		{"lookups/s, connected ID (426: found, not upgraded)", r.found, r.found1},
		{"lookups/s, unknown ID (404)", r.unknown, r.unknown1},
	} {
		ratio := l.at / l.ref
		s.add(row{what: l.what, a: fmt.Sprintf("%.0f", l.at), b: fmt.Sprintf("%.0f", l.ref), comp: fmt.Sprintf("%.2f", ratio), target: ">= 0.8", verdict: verdict(ratio >= 0.8)})
	}
}

// hosts are the source addresses of n synthetic agents, agentsPerHost
// each, from 127.0.1.1 on (127.0.0.1 is left to the clients).
func hosts(n int) []netip.Addr {
	var out []netip.Addr
	for i := 0; i*agentsPerHost < n; i++ {
		out = append(out, netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)}))
	}
	return out
}

// herdResult is what a kill and restart did to the fleet and to clients.
type herdResult struct {
	agents    int
	mark      time.Time       // the kill
	listening time.Time       // the new server listens
	allBack   time.Time       // every agent is welcomed again
	gone      time.Duration   // from the kill to the old server's exit
	back      []time.Duration // of each agent, from listening to its welcome, sorted
	dialled   []time.Duration // of each agent, from listening to the start of the attempt that got it in, sorted
	attempts  int64           // control connections tried, from the kill until all were back
	gaveUp    int
	serverCPU time.Duration   // of the new server until all were back
	agentsCPU time.Duration   // of the fleet process from the kill until all were back
	clients   []time.Duration // client requests during the herd
}

// herd kills srv, starts it again on its address after outage, and waits
// until every agent of f is back.
func herd(t *testing.T, f *fleetProc, srv *serverProc, outage time.Duration) herdResult {
	t.Helper()
	m := f.do(t, "mark")
	before := m.Stats
	cpu0 := f.cpu()
	h := herdResult{agents: before.Agents, mark: m.Mark}
	h.gone = srv.restart(t, outage)
	h.listening = time.Now()
	t.Logf("server gone %v after the kill, listening again after %v; waiting for %d agents",
		h.gone.Round(time.Millisecond), h.listening.Sub(h.mark).Round(time.Millisecond), h.agents)
	r := f.do(t, "back")
	h.allBack = time.Now()
	h.serverCPU, h.agentsCPU = procCPU(srv.cmd.Process.Pid), f.cpu()-cpu0
	s := r.Stats
	h.attempts, h.gaveUp = s.Attempts-before.Attempts, s.GaveUp
	for _, b := range r.Back {
		h.back = append(h.back, b.Welcomed-h.listening.Sub(h.mark))
		h.dialled = append(h.dialled, b.Dialled-h.listening.Sub(h.mark))
	}
	slices.Sort(h.back)
	slices.Sort(h.dialled)
	t.Logf("herd: all %d back %v after listening, %d attempts, %d gave up, CPU converge %v, agents %v (last failure: %s)",
		len(h.back), h.back[len(h.back)-1].Round(time.Millisecond), h.attempts, h.gaveUp, h.serverCPU, h.agentsCPU, s.LastError)
	return h
}

// peak is the most agents that came back within any window of d.
func (h herdResult) peak(d time.Duration) int {
	best, j := 0, 0
	for i := range h.back {
		for h.back[i]-h.back[j] >= d {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// rows adds the restart's rows to s; idle are the client requests' times
// before the kill.
func (h herdResult) rows(s *section, idle []time.Duration) {
	secs := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	all := h.back[len(h.back)-1]
	s.add(row{what: "old server gone, after the kill", a: ms(h.gone), comp: "-"})
	s.add(row{what: "new server listening, after the kill", a: ms(h.listening.Sub(h.mark)), comp: "-"})
	s.add(row{what: "attempts that got agents in: started within (1st-99th percentile)", a: ms(percentile(h.dialled, 99) - percentile(h.dialled, 1)), comp: "-"})
	s.add(row{what: "agents back: half", a: secs(percentile(h.back, 50)), comp: "-"})
	s.add(row{what: "agents back: 99 %", a: secs(percentile(h.back, 99)), comp: "-"})
	s.add(row{what: fmt.Sprintf("agents back: all %d", h.agents), a: secs(all), comp: "-", target: "<= " + secs(maxRestartTime), verdict: verdict(all <= maxRestartTime)})
	s.add(row{what: "most agents back in any 100 ms", a: fmt.Sprintf("%d", h.peak(100*time.Millisecond)), comp: "-"})
	s.add(row{what: "connection attempts per agent", a: fmt.Sprintf("%.2f", float64(h.attempts)/float64(h.agents)), comp: "-"})
	perAgent := func(d time.Duration) string {
		return fmt.Sprintf("%.0f µs", float64(d.Microseconds())/float64(h.agents))
	}
	s.add(row{what: "CPU per agent back: converge / agents", a: perAgent(h.serverCPU) + " / " + perAgent(h.agentsCPU), comp: "-"})
	s.add(row{what: "agents that gave up", a: fmt.Sprintf("%d", h.gaveUp), comp: "-", target: "0", verdict: verdict(h.gaveUp == 0)})
	if len(h.clients) == 0 || len(idle) == 0 {
		s.add(row{what: "client requests", a: "none answered", comp: "-", verdict: "MISS"})
		return
	}
	p50, i50 := percentile(h.clients, 50), percentile(idle, 50)
	p99, i99 := percentile(h.clients, 99), percentile(idle, 99)
	s.add(row{what: fmt.Sprintf("client request p50 (%d during the herd, %d idle)", len(h.clients), len(idle)), a: ms(p50), b: ms(i50), comp: fmt.Sprintf("%.1f", float64(p50)/float64(i50))})
	s.add(row{what: "client request p99", a: ms(p99), b: ms(i99), comp: fmt.Sprintf("%.1f", float64(p99)/float64(i99)), target: "<= " + ms(maxHerdP99), verdict: verdict(p99 <= maxHerdP99)})
}

// realAgentMemory is converge's memory per idle real agent, n of them,
// for reference; then the same once a client has come to each and gone,
// so that each keeps an idle stream in its pool.
func realAgentMemory(t *testing.T, n int, c *sshtest.Client) realMemory {
	t.Logf("connecting %d real agents", n)
	// All the agents come from 127.0.0.1: lift the per-address limit.
	srv := startServer(t, "--max-agents-per-addr=-1")
	defer srv.stop(t)
	before, err := srv.rssKiB()
	if err != nil {
		t.Fatal(err)
	}
	stop := startIdleAgents(t, srv, n, c)
	defer stop()
	time.Sleep(settleTime) // let the connections settle into idleness (not a synchronisation)
	after, err := srv.rssKiB()
	if err != nil {
		t.Fatal(err)
	}
	per := float64(after-before) / float64(n)
	t.Logf("memory: %d KiB -> %d KiB with %d real agents: %.1f KiB each", before, after, n, per)

	fillPools(t, srv, n)
	time.Sleep(settleTime) // as above (not a synchronisation)
	pooled, err := srv.rssKiB()
	if err != nil {
		t.Fatal(err)
	}
	perPooled := float64(pooled-before) / float64(n)
	t.Logf("memory: %d KiB with each agent's stream pool filled: %.1f KiB per agent", pooled, perPooled)
	return realMemory{idle: per, pooled: perPooled}
}

// realMemory is converge's memory per real agent: idle, and once a client
// has come and gone (the agent then keeps its stream pool filled).
type realMemory struct{ idle, pooled float64 }
