package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestBareAgentLeavesCheckoutClean: an agent downloaded into .converge/
// of a checkout, as the recipes do, and run there with keys from a CI
// secret, leaves `git status` clean: it writes a .gitignore into its
// state directory .converge/, which holds itself and its files.
func TestBareAgentLeavesCheckoutClean(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	dir := t.TempDir()
	if out, err := exec.Command("git", "-C", dir, "init", "-q").CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin("agent"))
	if err != nil {
		t.Fatal(err)
	}
	agentPath := filepath.Join(dir, ".converge", "agent")
	if err := os.MkdirAll(filepath.Dir(agentPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agentPath, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(agentPath, "--id", "clean-checkout", r.URL)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "CONVERGE_AUTHORIZED_KEYS="+c.PublicKey, "CONVERGE_CONNECT_TIMEOUT=1s")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("agent: %v\n%s", err, out)
	}
	out, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=all").CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("git status after the agent ran in the checkout (%v):\n%s", err, out)
	}
}
