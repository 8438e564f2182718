package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// readmeSection returns the README's section under the heading that
// starts with title, up to the next section of the same level.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## "+title)
	if !ok {
		t.Fatalf("README has no section %q", title)
	}
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// shellBlocks returns the ```sh blocks of a markdown text.
func shellBlocks(text string) []string {
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(text, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// TestQuickStartTwice follows the README's Quick start twice in a row, as a
// new user would: the "CI job" block in bash (from a checkout with bin/,
// with the user's ~/.ssh key), then the ssh command the agent printed,
// answering yes on first contact. The second run must reach its agent
// with no host key warning and no refusal: a literal ID reused with a
// fresh host key would stop ssh with "REMOTE HOST IDENTIFICATION HAS
// CHANGED".
func TestQuickStartTwice(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)

	var job string
	for _, b := range shellBlocks(readmeSection(t, "Quick start")) {
		if strings.Contains(b, "/agent\"") {
			job = b
		}
	}
	if job == "" || !strings.Contains(job, "ws://localhost:8000") {
		t.Fatalf("the Quick start has no block that starts the agent against ws://localhost:8000")
	}
	// The checkout (bin/ holds the built commands), the user's home, and
	// the job's directory instead of /tmp/job.
	checkout, home, jobDir := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "job")
	if err := os.Symlink(binDir, filepath.Join(checkout, "bin")); err != nil {
		t.Fatal(err)
	}
	dotssh := filepath.Join(home, ".ssh")
	os.MkdirAll(dotssh, 0o700)
	copyFile(t, c.KeyFile, filepath.Join(dotssh, "id_ed25519"))
	os.Chmod(filepath.Join(dotssh, "id_ed25519"), 0o600)
	if err := os.WriteFile(filepath.Join(dotssh, "id_ed25519.pub"), []byte(c.PublicKey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	job = strings.ReplaceAll(job, "/tmp/job", jobDir)
	job = strings.ReplaceAll(job, "ws://localhost:8000", r.URL)
	// exec: the agent is the shell's process, so the cleanup ends it.
	lines := strings.Split(strings.TrimSpace(job), "\n")
	lines[len(lines)-1] = "exec " + lines[len(lines)-1]
	job = strings.Join(lines, "\n")

	printed := regexp.MustCompile(`(?m)^\s*(ssh\s+-oProxyCommand="wsproxy [^"]+" -oHostKeyAlias=(\S+) \S+@localhost)\s*$`)
	ids := map[string]bool{}
	for run := 1; run <= 2; run++ {
		out := &syncBuffer{}
		cmd := exec.Command("bash", "-c", job)
		cmd.Dir = checkout
		cmd.Env = append(cleanEnv(), "HOME="+home)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		var m []string
		waitFor(t, "the agent's printed ssh command", func() bool {
			select {
			case <-done:
				t.Fatalf("run %d: the agent exited before printing how to connect:\n%s", run, out)
			default:
			}
			m = printed.FindStringSubmatch(out.String())
			return m != nil
		})
		ids[m[2]] = true

		// The user's ssh, as printed, with wsproxy on PATH; the options
		// only say which key and known_hosts are the user's (OpenSSH
		// finds ~/.ssh through the password database, not $HOME) and
		// answer yes on first contact.
		user := strings.Replace(m[1], "ssh ", "ssh -F none -i "+filepath.Join(dotssh, "id_ed25519")+
			" -oUserKnownHostsFile="+filepath.Join(dotssh, "known_hosts")+
			" -oIdentitiesOnly=yes -oIdentityAgent=none -oBatchMode=yes -oStrictHostKeyChecking=accept-new ", 1)
		ssh := exec.Command("bash", "-c", user+" echo quick-start-ok")
		ssh.Env = append(cleanEnv(), "HOME="+home, "PATH="+binDir+":"+os.Getenv("PATH"))
		got, err := ssh.CombinedOutput()
		if err != nil || !strings.Contains(string(got), "quick-start-ok") {
			t.Fatalf("run %d: %s\n%v\n%s\nagent:\n%s", run, user, err, got, out)
		}
		if strings.Contains(string(got), "IDENTIFICATION HAS CHANGED") {
			t.Errorf("run %d: ssh warned of a changed host key:\n%s", run, got)
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("run %d: the agent did not exit at the last logout:\n%s", run, out)
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("run %d: the agent exited with %d, want 0 (the last user logged out):\n%s", run, code, out)
		}
	}
	if len(ids) != 2 {
		t.Errorf("both runs used the ID %v: a second run needs its own ID, or the host key it had", ids)
	}
}
