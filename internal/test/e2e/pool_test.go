package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// Series of converge's /metrics about agents' streams.
const (
	fromPool    = `converge_agent_streams_total{source="pool"}`
	dialledBack = `converge_agent_streams_total{source="dial"}`
	idleStreams = `converge_pooled_streams_idle`
)

// sshEcho runs `ssh host echo word` through tgt and checks its output.
func sshEcho(t *testing.T, c *sshtest.Client, tgt sshtest.Target, word string) {
	t.Helper()
	if got := c.SSH(tgt, 0, "echo "+word); strings.TrimSpace(got.Stdout) != word {
		t.Fatalf("ssh echo %s: stdout %q", word, got.Stdout)
	}
}

// TestStreamPool: the agent's first client gets a dialled-back stream,
// the next ones an idle stream the agent opened meanwhile, and each
// taken stream is replaced. The agent opens its idle streams raw, as its
// resumable dial-backs, so resumable clients are spliced raw to raw; a
// plain client never gets a raw idle stream (nothing would keep it
// alive through proxies) and is dialled back, over WebSockets.
func TestStreamPool(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "pooled-job", c)
	tgt := r.target("pooled-job")
	plain := tgt
	plain.ProxyCommand = bin("wsproxy") + " --no-resume " + r.URL + "/client/pooled-job"

	sshEcho(t, c, tgt, "first")
	waitFor(t, "an idle stream", func() bool { return metric(t, r.HTTP, idleStreams) == 1 })
	for i, target := range []sshtest.Target{tgt, plain, tgt} {
		sshEcho(t, c, target, fmt.Sprint("pooled", i))
		waitFor(t, "the pool refilled", func() bool { return metric(t, r.HTTP, idleStreams) == 1 })
	}
	for series, want := range map[string]float64{
		dialledBack: 2, // the first client's, and the plain one's
		fromPool:    2,
		`converge_stream_legs_total{agent="raw",client="raw"}`:             3,
		`converge_stream_legs_total{agent="websocket",client="websocket"}`: 1,
	} {
		if got := metric(t, r.HTTP, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// TestStreamPoolWithOldParts: an agent that does not pool (as agents
// before pools) and a server that does not pool (--stream-pool 0) still
// serve every client, by dial-back.
func TestStreamPoolWithOldParts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		srv   func(*server.Config)
		agent func(*agent.Config)
	}{
		{"old agent", func(*server.Config) {}, func(cfg *agent.Config) { cfg.NoStreamPool = true }},
		{"server without pools", func(cfg *server.Config) { cfg.StreamPool = -1 }, func(*agent.Config) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startServer(t, tc.srv)
			c := sshtest.New(t)
			startAgent(t, r, "nopool", c, tc.agent)
			for _, word := range []string{"one", "two", "three"} {
				sshEcho(t, c, r.target("nopool"), word)
			}
			if got := metric(t, r.HTTP, dialledBack); got != 3 {
				t.Errorf("streams dialled back: %v, want 3", got)
			}
			if got := metric(t, r.HTTP, fromPool); got != 0 {
				t.Errorf("streams from the pool: %v, want 0", got)
			}
		})
	}
}

// TestResumeOverPooledStreams: a resumable session whose client link is
// cut comes back over an idle stream of the pool and goes on byte-exact;
// after a server restart kills every idle stream, the new server's pool
// fills again with the agent's next client.
func TestResumeOverPooledStreams(t *testing.T) {
	t.Parallel()
	r := newResumeRig(t, "pool-resume")
	base := func() string { return "http://" + r.srv.addr }
	echo := startEcho(t, r.c, r.tgt)
	waitFor(t, "an idle stream", func() bool { return metric(t, base(), idleStreams) == 1 })
	if n := r.clientProxy.Cut(); n == 0 {
		t.Fatal("no connection to cut")
	}
	echo.roundTrip()
	if got := metric(t, base(), fromPool); got != 1 {
		t.Errorf("streams from the pool after the resume: %v, want 1", got)
	}

	r.restartServer()
	echo.roundTrip() // resumed on the new server, by dial-back: its pool starts empty
	waitFor(t, "an idle stream on the new server", func() bool { return metric(t, base(), idleStreams) == 1 })
	sshEcho(t, r.c, r.tgt, "after-restart")
	if got := metric(t, base(), fromPool); got != 1 {
		t.Errorf("streams from the new server's pool: %v, want 1", got)
	}
	echo.finish()
}
