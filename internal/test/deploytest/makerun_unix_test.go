//go:build !windows

package deploytest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestMakeRunFirstScreen: the demo server of `make run`, under a laptop's
// descriptor limit (macOS allows 10,240 a process), starts without a
// warning: a new user's first screen should not send them to tune their
// system. The command is the Makefile's own (make -n), with the address
// made a free loopback port and the binary the one built here.
func TestMakeRunFirstScreen(t *testing.T) {
	plan, err := exec.Command("make", "-s", "-n", "-C", repoRoot, "run").Output()
	if err != nil {
		t.Fatalf("make -n run: %v\n%s", err, plan)
	}
	var args []string
	for line := range strings.Lines(string(plan)) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "./bin/converge" {
			args = f[1:]
		}
	}
	if args == nil {
		t.Fatalf("make -n run runs no ./bin/converge:\n%s", plan)
	}
	for i, a := range args {
		if i > 0 && args[i-1] == "--addr" {
			args[i] = "127.0.0.1:0"
		} else if v, ok := strings.CutPrefix(a, "--addr="); ok && v != "" {
			args[i] = "--addr=127.0.0.1:0"
		}
	}
	cmd := exec.Command("sh", append([]string{"-c", `ulimit -n 10240 && exec "$@"`, "sh", bin("converge")}, args...)...)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
	p := start(t, cmd)
	waitFor(t, "the server to listen", func() bool {
		if p.exited() {
			t.Fatalf("the server exited: %v\n%s", p.err, p.out)
		}
		return strings.Contains(p.out.String(), "msg=listening")
	})
	if strings.Contains(p.out.String(), "level=WARN") {
		t.Errorf("make run's first screen warns (args %q):\n%s", args, p.out)
	}
}
