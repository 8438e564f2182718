package deploytest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A checkout is what a pull request controls, and `agent --detach`
// writes its log and state in .converge/ there: symlinks committed in
// their place must not make it write elsewhere (issue 18, finding 8).

// detachIn runs `agent --detach` with the checkout dir and returns its
// output and error; it kills the agent left behind when the test ends.
func detachIn(t *testing.T, r *relay, dir, id string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin("agent"), "--detach", "--dir", dir, "--id", id, "--state-dir", filepath.Join(t.TempDir(), "state"),
		"ws"+strings.TrimPrefix(r.HTTP, "http"))
	cmd.Env = append(os.Environ(), "CONVERGE_AUTHORIZED_KEYS_DATA=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA x", "RUNNER_TEMP=", "XDG_STATE_HOME=")
	out, err := cmd.CombinedOutput()
	t.Cleanup(func() {
		b, err := os.ReadFile(filepath.Join(dir, ".converge", "agent.json"))
		var st struct{ PID int }
		if err == nil && json.Unmarshal(b, &st) == nil && st.PID > 0 {
			if p, err := os.FindProcess(st.PID); err == nil {
				p.Kill()
			}
		}
	})
	return string(out), err
}

// TestDetachCommittedSymlinks: a .converge symlink to a folder is
// refused; symlinks for agent.log and agent.json.tmp inside .converge are
// replaced, not followed; the files they point to are left as they were.
func TestDetachCommittedSymlinks(t *testing.T) {
	r := startServer(t, nil)
	victims := t.TempDir()
	keep := []byte("a file of the user's, not the agent's\n")
	for _, name := range []string{"agent.log", "agent.json.tmp", "victim"} {
		write(t, filepath.Join(victims, name), keep)
	}

	dir := t.TempDir()
	if err := os.Symlink(victims, filepath.Join(dir, ".converge")); err != nil {
		t.Fatal(err)
	}
	out, err := detachIn(t, r, dir, "symlinked-dir")
	if err == nil || !strings.Contains(out, "symlink") {
		t.Errorf("agent --detach with .converge a symlink to a folder: %v, want refused:\n%s", err, out)
	}

	dir = t.TempDir()
	for _, name := range []string{"agent.log", "agent.json.tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, ".converge"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(victims, "victim"), filepath.Join(dir, ".converge", name)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := detachIn(t, r, dir, "symlinked-files"); err != nil || !strings.Contains(out, "registered") {
		t.Errorf("agent --detach with symlinked files in .converge: %v, want it to start:\n%s", err, out)
	}
	for _, name := range []string{"agent.log", "agent.json.tmp", "victim"} {
		if b, err := os.ReadFile(filepath.Join(victims, name)); err != nil || string(b) != string(keep) {
			t.Errorf("%s, which a committed symlink pointed to, now holds %q (%v)", name, b, err)
		}
	}
}

// TestActionCommittedSymlink: a .converge symlink committed in the
// workspace, to a file or a folder, is refused by the Action before it
// writes there; what it points to is left as it was.
func TestActionCommittedSymlink(t *testing.T) {
	r := startServer(t, agentDist(t))
	keep := []byte("a file of the user's, not the agent's\n")
	for _, target := range []string{"file", "folder"} {
		j := newJob(t, keysServer(t, nil))
		victim := filepath.Join(t.TempDir(), "victim")
		check := victim
		if target == "folder" {
			write(t, filepath.Join(victim, ".gitignore"), keep)
			check = filepath.Join(victim, ".gitignore")
		} else {
			write(t, victim, keep)
		}
		if err := os.Symlink(victim, filepath.Join(j.workspace, ".converge")); err != nil {
			t.Fatal(err)
		}
		out, _ := j.step("main", map[string]string{"server": r.HTTP, "limit-access-to-actor": "false", "authorized-keys": "ssh-ed25519 AAAA x"}).CombinedOutput()
		if !strings.Contains(string(out), "::error") || !strings.Contains(string(out), ".converge is a symlink") {
			t.Errorf(".converge a symlink to a %s: want refused:\n%s", target, out)
		}
		if b, err := os.ReadFile(check); err != nil || string(b) != string(keep) {
			t.Errorf(".converge a symlink to a %s: the file now holds %q (%v)", target, b, err)
		}
	}
}
