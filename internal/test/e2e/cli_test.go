package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelpAndVersion: every command explains itself and names its version.
func TestHelpAndVersion(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"converge", "agent", "wsproxy", "tcptows"} {
		out, err := exec.Command(bin(name), "--help").CombinedOutput()
		if err != nil {
			t.Errorf("%s --help: %v\n%s", name, err, out)
		}
		if !strings.Contains(string(out), "Usage: "+name) || !strings.Contains(string(out), "CONVERGE_") && name != "wsproxy" {
			t.Errorf("%s --help does not show usage and environment twins:\n%s", name, out)
		}
		out, err = exec.Command(bin(name), "--version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), name+" ") {
			t.Errorf("%s --version: %v %q", name, err, out)
		}
	}
}

// TestAgentUsageErrors: mistakes on the agent's command line get a clear
// message and exit status 2, never a crash.
func TestAgentUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "missing server URL"},
		{[]string{"http://localhost:1"}, "use ws:// or wss://"},
		{[]string{"--id", "bad id", "ws://localhost:1"}, "rendezvous ID"},
		{[]string{"ws://a", "ws://b"}, "too many arguments"},
	} {
		cmd := exec.Command(bin("agent"), tc.args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("agent %q: %v, output %q; want exit 2 mentioning %q", tc.args, err, out, tc.want)
		}
	}
}
