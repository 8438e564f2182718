package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// shellQuote quotes args for a POSIX shell, as GIT_SSH_COMMAND is run.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// TestGitOverSSH: git clone and git push of a repository in the agent's
// directory, with ssh through the ProxyCommand.
func TestGitOverSSH(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "git-job", c)
	tgt := r.target("git-job")
	c.SSH(tgt, 0, "git init -q --bare -b main repo.git")

	sshCmd := shellQuote(append([]string{"ssh"}, c.Options(tgt)...))
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+c.Home, "GIT_CONFIG_NOSYSTEM=1", "GIT_SSH_COMMAND="+sshCmd,
			"GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	work := t.TempDir()
	git(work, "clone", "-q", tgt.Dest()+":repo.git", "first")
	first := filepath.Join(work, "first")
	os.WriteFile(filepath.Join(first, "fix.txt"), []byte("the fix\n"), 0o600)
	git(first, "add", "fix.txt")
	git(first, "commit", "-q", "-m", "fix the build")
	git(first, "push", "-q", "origin", "HEAD:main")

	// The push landed in the agent's directory.
	log := c.SSH(tgt, 0, "git -C repo.git log --format=%s main")
	if strings.TrimSpace(log.Stdout) != "fix the build" {
		t.Errorf("remote log %q, want the pushed commit", log.Stdout)
	}
	if _, err := os.Stat(filepath.Join(a.Dir, "repo.git", "HEAD")); err != nil {
		t.Errorf("repository not in the agent's directory: %v", err)
	}
	// And a fresh clone gets it back.
	git(work, "clone", "-q", "-b", "main", tgt.Dest()+":repo.git", "second")
	b, err := os.ReadFile(filepath.Join(work, "second", "fix.txt"))
	if err != nil || string(b) != "the fix\n" {
		t.Errorf("second clone: fix.txt %q, %v", b, err)
	}
}
