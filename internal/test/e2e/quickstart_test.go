package e2e

import (
	"fmt"
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

// userHome is a new user's home: their key in ~/.ssh, as ssh-keygen
// leaves it, and no known_hosts yet.
func userHome(t *testing.T, c *sshtest.Client) string {
	t.Helper()
	home := t.TempDir()
	dotssh := filepath.Join(home, ".ssh")
	os.MkdirAll(dotssh, 0o700)
	copyFile(t, c.KeyFile, filepath.Join(dotssh, "id_ed25519"))
	os.Chmod(filepath.Join(dotssh, "id_ed25519"), 0o600)
	if err := os.WriteFile(filepath.Join(dotssh, "id_ed25519.pub"), []byte(c.PublicKey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return home
}

// shellJob is a documented block running in a shell as a CI job would:
// its output, and done closed when the shell has exited.
type shellJob struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startShellJob runs script with shell in dir; the test's end kills it.
func startShellJob(t *testing.T, shell, script, dir string, env ...string) *shellJob {
	t.Helper()
	j := &shellJob{cmd: exec.Command(shell, "-c", script), out: &syncBuffer{}, done: make(chan struct{})}
	j.cmd.Dir = dir
	j.cmd.Env = append(cleanEnv(), env...)
	j.cmd.Stdout, j.cmd.Stderr = j.out, j.out
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { j.cmd.Wait(); close(j.done) }()
	t.Cleanup(func() { j.cmd.Process.Kill(); <-j.done })
	return j
}

// printedSSH matches the ssh command an agent prints for users.
var printedSSH = regexp.MustCompile(`(?m)^\s*(ssh\s+-oProxyCommand="wsproxy [^"]+" -oHostKeyAlias=(\S+) \S+@localhost)\s*$`)

// connectAsPrinted waits for the agent in j to print its ssh command, runs
// it as the user whose home is home (wsproxy on PATH, answering yes on
// first contact) with a command, and returns the agent's ID.
func connectAsPrinted(t *testing.T, what string, j *shellJob, home string) string {
	t.Helper()
	var m []string
	waitFor(t, what+": the agent's printed ssh command", func() bool {
		if m = printedSSH.FindStringSubmatch(j.out.String()); m != nil {
			return true
		}
		select {
		case <-j.done:
			t.Fatalf("%s: the job ended before its agent printed how to connect:\n%s", what, j.out)
		default:
		}
		return false
	})
	// The options only say which key and known_hosts are the user's
	// (OpenSSH finds ~/.ssh through the password database, not $HOME)
	// and answer yes on first contact.
	dotssh := filepath.Join(home, ".ssh")
	user := strings.Replace(m[1], "ssh ", "ssh -F none -i "+filepath.Join(dotssh, "id_ed25519")+
		" -oUserKnownHostsFile="+filepath.Join(dotssh, "known_hosts")+
		" -oIdentitiesOnly=yes -oIdentityAgent=none -oBatchMode=yes -oStrictHostKeyChecking=accept-new ", 1)
	ssh := exec.Command("bash", "-c", user+" echo docs-user-ok")
	ssh.Env = append(cleanEnv(), "HOME="+home, "PATH="+binDir+":"+os.Getenv("PATH"))
	got, err := ssh.CombinedOutput()
	if err != nil || !strings.Contains(string(got), "docs-user-ok") {
		t.Fatalf("%s: %s\n%v\n%s\njob:\n%s", what, user, err, got, j.out)
	}
	if strings.Contains(string(got), "IDENTIFICATION HAS CHANGED") {
		t.Errorf("%s: ssh warned of a changed host key:\n%s", what, got)
	}
	return m[2]
}

// exit waits for the job's shell to end by itself and returns its status.
func (j *shellJob) exit(t *testing.T, what string) int {
	t.Helper()
	select {
	case <-j.done:
		return j.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the job did not end by itself:\n%s", what, j.out)
	}
	return -1
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
	checkout, home, jobDir := t.TempDir(), userHome(t, c), filepath.Join(t.TempDir(), "job")
	if err := os.Symlink(binDir, filepath.Join(checkout, "bin")); err != nil {
		t.Fatal(err)
	}
	job = strings.ReplaceAll(job, "/tmp/job", jobDir)
	job = strings.ReplaceAll(job, "ws://localhost:8000", r.URL)
	// exec: the agent is the shell's process, so the cleanup ends it.
	lines := strings.Split(strings.TrimSpace(job), "\n")
	lines[len(lines)-1] = "exec " + lines[len(lines)-1]
	job = strings.Join(lines, "\n")

	ids := map[string]bool{}
	for run := 1; run <= 2; run++ {
		what := fmt.Sprintf("run %d", run)
		j := startShellJob(t, "bash", job, checkout, "HOME="+home)
		ids[connectAsPrinted(t, what, j, home)] = true
		if code := j.exit(t, what); code != 0 {
			t.Errorf("%s: the agent exited with %d, want 0 (the last user logged out):\n%s", what, code, j.out)
		}
	}
	if len(ids) != 2 {
		t.Errorf("both runs used the ID %v: a second run needs its own ID, or the host key it had", ids)
	}
}
