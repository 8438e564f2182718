package e2e

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestNohupKeptCounted: a user starts `nohup sleep &` in an interactive
// shell and logs out; the process runs on, and the agent's log counts it
// as kept (kept_nohup=1), not ended.
func TestNohupKeptCounted(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	log := &syncBuffer{}
	startAgent(t, r, "nohup-job", c, func(cfg *agent.Config) {
		cfg.Shell = "bash"
		cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	})
	tgt := r.target("nohup-job")
	kept := markerSleep()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "ssh", tgt, "-tt", tgt.Dest())
	cmd.Stdin = strings.NewReader("nohup sleep " + kept + " >/dev/null 2>&1 &\n" +
		`until [ "$(cat /proc/$!/comm)" = sleep ]; do :; done; exit 0` + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh -tt: %v\n%s", err, out)
	}
	pids := processes("sleep", kept)
	for _, pid := range pids {
		t.Cleanup(func() {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		})
	}
	if len(pids) != 1 {
		t.Fatalf("nohup sleep: %d processes after logout, want it kept running", len(pids))
	}
	waitFor(t, "the agent to log what the session left", func() bool { return strings.Contains(log.String(), "left processes behind") })
	if !strings.Contains(log.String(), "ended=0 kept_nohup=1") {
		t.Errorf("the agent's log does not count the kept nohup process:\n%s", log)
	}
}
