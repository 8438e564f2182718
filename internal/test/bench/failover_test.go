package bench

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/redistest"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// failover measures what a Redis Sentinel failover costs two replicas:
// the time from a kill -9 of the master to the first agent registration
// accepted (through the replica that did not hold the session's agent),
// and to a fresh ssh through it. Each round kills the master of the
// round before; its old master has come back as a replica first.
func failover(t *testing.T, tb *table, rounds int, c *sshtest.Client) {
	t.Helper()
	sn := redistest.StartSentinels(t)
	addrs := strings.Join(sn.Addrs(), ",")
	reps := []*serverProc{
		startServer(t, "--redis-sentinel", addrs, "--redis-master", redistest.MasterName, "--advertise", "http://127.0.0.1:0", "--drain-delay", "-1s"),
		startServer(t, "--redis-sentinel", addrs, "--redis-master", redistest.MasterName, "--advertise", "http://127.0.0.1:0", "--drain-delay", "-1s"),
	}
	startAgent(t, reps[0], "held", c)
	held := sshtest.Target{User: reps[1].User, Alias: "held", ProxyCommand: bin("wsproxy") + " " + reps[1].URL() + "/client/held"}
	var regs, conns []time.Duration
	for i := range rounds {
		old := sn.WaitSettled() // and a replica to promote, in sync
		killed := time.Now()
		sn.Node(old).Kill()
		startAgent(t, reps[1], fmt.Sprint("after-", i), c) // waits for its registration
		regs = append(regs, time.Since(killed))
		if _, err := connect(c, held); err != nil {
			t.Fatalf("ssh through the non-holder after failover %d: %v", i+1, err)
		}
		conns = append(conns, time.Since(killed))
		t.Logf("failover %d: registration %v, ssh through the non-holder %v after the kill", i+1, regs[i].Round(time.Millisecond), conns[i].Round(time.Millisecond))
		sn.Node(old).Restart() // back as a replica of the new master
	}
	s := tb.add(fmt.Sprintf("Cluster: Redis Sentinel failover (kill -9 of the master; Sentinels' down-after-milliseconds %d, failover-timeout %d)",
		redistest.DownAfter.Milliseconds(), redistest.FailoverTimeout.Milliseconds()), "median", "max", "failovers")
	s.add(row{what: "kill -9 → first agent registration accepted", a: ms(median(regs)), b: ms(slices.Max(regs)), comp: fmt.Sprint(rounds)})
	s.add(row{what: "kill -9 → a fresh `ssh host true` through the non-holder done", a: ms(median(conns)), b: ms(slices.Max(conns)), comp: fmt.Sprint(rounds)})
	tb.notes = append(tb.notes, "Failover: a Redis master, its replica and three Sentinels (quorum 2) on loopback, two replicas following them with --redis-sentinel; the agent registers with a replica while there is no master, which retries until the Sentinels promote the replica. The Sentinels' down-after-milliseconds is the floor: they start a failover only once the master has been silent that long; production settings (30 s by default) cost that much more.")
}

// TestBenchFailover prints only the Redis failover rows (~30 s).
func TestBenchFailover(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table (make bench-failover)")
	}
	t.Setenv("CONVERGE_CLUSTER_KEY", benchClusterKey)
	tb := &table{header: machine()}
	failover(t, tb, 3, sshtest.New(t))
	fmt.Print("\n" + tb.String())
}
