package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/faultproxy"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestClusterSplitBrain: a replica that loses Redis (silently: its
// packets are held, not refused) while it holds an agent stops serving
// it once its lease may have ended, and releases it (close 1001); the
// agent registers again, with its token, on a replica that reaches
// Redis, before any newcomer could take its ID. When the partition
// heals, one replica holds the agent and clients of every replica reach
// it (issue 18, finding 2).
func TestClusterSplitBrain(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 1, false)
	toRedis, err := faultproxy.New(strings.TrimPrefix(rig.redis.URL(), "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { toRedis.Close() })
	rig.reps = append(rig.reps, startServerProcEnv(t, []string{"CONVERGE_CLUSTER_KEY=" + clusterKey},
		"--redis", "redis://"+toRedis.Addr(), "--advertise", "http://127.0.0.1:0", "--drain-delay", "1s", "--grace", "2m"))
	toReplica, err := faultproxy.New(rig.reps[1].addr) // the agent's way in: its load balancer
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { toReplica.Close() })

	c := sshtest.New(t)
	lb := &relay{URL: "ws://" + toReplica.Addr(), HTTP: "http://" + toReplica.Addr(), User: "ciuser", Addr: toReplica.Addr()}
	startAgent(t, lb, "split", c)
	waitFor(t, "replica 1 holding the agent", func() bool { return rig.owner("split") == 1 })

	toReplica.Retarget(rig.reps[0].addr) // the load balancer now sends new connections to replica 0
	toRedis.Pause()
	parted := time.Now()
	for rig.owner("split") != 0 {
		if time.Since(parted) > 45*time.Second {
			t.Fatalf("45 s after replica 1 lost Redis it still holds the agent (Redis names replica %d)\n%s", rig.owner("split"), rig.reps[1].logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the agent was held by replica 0 %v after replica 1 lost Redis", time.Since(parted).Round(time.Millisecond))
	if got := c.SSH(rig.relay(0).target("split"), 0, "echo via-0"); strings.TrimSpace(got.Stdout) != "via-0" {
		t.Fatalf("ssh via replica 0 during the partition: %q", got.Stdout)
	}
	toRedis.Resume()
	waitFor(t, "replica 1 forwarding the agent's clients", func() bool {
		return c.Run("ssh", rig.relay(1).target("split"), "", rig.relay(1).target("split").Dest(), "true").Code == 0
	})
	if o := rig.owner("split"); o != 0 {
		t.Fatalf("after the partition healed Redis names replica %d as the holder, want 0", o)
	}
	if n := metric(t, rig.relay(1).HTTP, `converge_forwarded_streams_total{kind="client"}`); n < 1 {
		t.Errorf("replica 1 forwarded %v clients after the partition healed, want at least 1: it must not serve a stale agent of its own", n)
	}
}
