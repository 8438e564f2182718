package e2e

import (
	"os/exec"
	"regexp"
	"syscall"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// TestGoodbyeFreesID: an agent that ends on purpose (nobody logging in,
// SIGTERM) says goodbye, and the server frees its ID at once: the same ID
// registers again straight away (the Quick start run twice), and no
// reservation counts against --max-agents-per-addr. Only an agent whose
// link dropped (kill -9) keeps its ID reserved, and the refusal says
// until when.
func TestGoodbyeFreesID(t *testing.T) {
	r := startServer(t, func(cfg *server.Config) { cfg.MaxAgentsPerAddr = 1 })
	c := sshtest.New(t)
	noLogin := []string{"CONVERGE_CONNECT_TIMEOUT=1s"}

	p := runAgentBinary(t, r, keyDir(t, c), noLogin, "--id", "quickstart")
	if code := p.exit(); code != 0 {
		t.Fatalf("first agent: exit status %d, want 0 (nobody logged in)", code)
	}
	p = runAgentBinary(t, r, keyDir(t, c), nil, "--id", "quickstart") // fails the test if refused
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("second agent, SIGTERM: exit status %d, want 0", code)
	}
	// Neither left a reservation charged to this address (limit 1).
	p = runAgentBinary(t, r, keyDir(t, c), nil, "--id", "another-job")
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.exit()

	p = runAgentBinary(t, r, keyDir(t, c), nil, "--id", "dropped")
	p.cmd.Process.Kill()
	p.exit()
	cmd := exec.Command(bin("agent"), "--id", "dropped", r.URL)
	cmd.Dir, cmd.Env = keyDir(t, c), cleanEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !regexp.MustCompile(`"dropped" is reserved until \d\d:\d\d:\d\d UTC for an agent whose link dropped`).Match(out) {
		t.Errorf("the ID of an agent killed with -9: %v, want refused saying until when:\n%s", err, out)
	}
}

// TestClusterGoodbyeFreesID: an agent that ends on purpose on one replica
// frees its ID for every replica at once: the same ID registers straight
// away through another replica (the shared registry keeps no reservation).
func TestClusterGoodbyeFreesID(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 2, false)
	c := sshtest.New(t)
	p := runAgentBinary(t, rig.relay(0), keyDir(t, c), nil, "--id", "cluster-bye")
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("agent on replica 0, SIGTERM: exit status %d, want 0", code)
	}
	p = runAgentBinary(t, rig.relay(1), keyDir(t, c), nil, "--id", "cluster-bye") // fails the test if refused
	if got := rig.owner("cluster-bye"); got != 1 {
		t.Errorf("Redis says replica %d holds the ID, want 1", got)
	}
}
