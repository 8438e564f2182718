package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// yamlBlock returns the README Recipes' ```yaml block whose first line
// is the comment first.
func yamlBlock(t *testing.T, first string) string {
	t.Helper()
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(readmeSection(t, "Recipes"), -1) {
		if strings.HasPrefix(m[1], first) {
			return m[1]
		}
	}
	t.Fatalf("the README's Recipes have no yaml block starting %q", first)
	return ""
}

// listItems returns the "  - command" lines under key: in a GitLab job.
func listItems(block, key string) []string {
	var items []string
	in := false
	for _, l := range strings.Split(block, "\n") {
		switch {
		case strings.HasPrefix(l, key+":"):
			in = true
		case in && strings.HasPrefix(l, "  - "):
			items = append(items, strings.TrimPrefix(l, "  - "))
		case in && l != "":
			in = false
		}
	}
	return items
}

// ciWorkspace is a checkout as a CI job sees it: a git repository with a
// committed file, so that `git status` shows what the job left behind.
func ciWorkspace(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"init", "-q"},
		{"-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-q", "--allow-empty", "-m", "job"},
	} {
		if out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

// checkClean fails when the job left untracked files in its checkout.
func checkClean(t *testing.T, what, dir string) {
	t.Helper()
	out, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=all").CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("%s: the job left the checkout unclean (%v):\n%s", what, err, out)
	}
}

// distServer is a server whose downloads hold the suite's agent for this
// Linux machine, as `make dist` would embed it.
func distServer(t *testing.T) *relay {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the suite's agent binary is built for the host; this test expects Linux")
	}
	dist := t.TempDir()
	copyFile(t, bin("agent"), filepath.Join(dist, "agent-linux-"+runtime.GOARCH))
	return startServer(t, func(c *server.Config) { c.Dist = os.DirFS(dist) })
}

// ciURLs points a recipe's example server at r.
func ciURLs(script string, r *relay) string {
	script = strings.ReplaceAll(script, "wss://converge.example.com", r.URL)
	return strings.ReplaceAll(script, "https://converge.example.com", r.HTTP)
}

// TestREADMEGitHubRecipe runs the README's GitHub Actions recipe's run:
// script in bash with a runner's variables: it downloads the agent for
// this OS and architecture into .converge/, lets in the keys of
// $GITHUB_ACTOR (served here as a forge would), and takes a user who
// connects with the printed command; the checkout stays clean.
func TestREADMEGitHubRecipe(t *testing.T) {
	t.Parallel()
	r := distServer(t)
	c := sshtest.New(t)
	// The forge also serves the release's sums, here those of the suite's agent.
	forge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/octocat.keys":
			fmt.Fprintln(w, c.PublicKey)
		case "/agent.sha256":
			fmt.Fprintf(w, "# version: test\n%s  agent-linux-%s\n", fileSum(t, bin("agent")), runtime.GOARCH)
		default:
			http.NotFound(w, req)
		}
	}))
	t.Cleanup(forge.Close)

	block := yamlBlock(t, "# GitHub Actions")
	_, script, ok := strings.Cut(block, "run: |\n")
	if !ok {
		t.Fatalf("the GitHub recipe has no run: | script:\n%s", block)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(script, "\n"), "\n") {
		l = strings.TrimPrefix(l, "    ")
		if strings.HasPrefix(l, "./agent ") {
			l = "exec " + l // the agent is the shell's process, so the cleanup ends it
		}
		lines = append(lines, l)
	}
	script = strings.ReplaceAll(ciURLs(strings.Join(lines, "\n"), r), "https://github.com", forge.URL)
	const releaseSums = "https://raw.githubusercontent.com/converge-ci/converge/v1/action/agent.sha256"
	if !strings.Contains(script, releaseSums) {
		t.Fatalf("the GitHub recipe does not check the agent against the release's sums %s:\n%s", releaseSums, script)
	}
	script = strings.ReplaceAll(script, releaseSums, forge.URL+"/agent.sha256")

	ws, home := ciWorkspace(t), userHome(t, c)
	env := []string{"HOME=" + t.TempDir(), "GITHUB_RUN_ID=4242", "GITHUB_RUN_ATTEMPT=2", "GITHUB_JOB=test", "GITHUB_ACTOR=octocat",
		"GITHUB_WORKSPACE=" + ws, "RUNNER_TEMP=" + t.TempDir()}
	j := startShellJob(t, "bash", script, ws, env...)
	id := connectAsPrinted(t, "GitHub recipe", j, home)
	if !strings.HasPrefix(id, "run-4242-2-test-") {
		t.Errorf("GitHub recipe: ID %q, want run-4242-2-test- and random digits", id)
	}
	if code := j.exit(t, "GitHub recipe"); code != 0 {
		t.Errorf("GitHub recipe: the agent exited with %d, want 0 (the last user logged out):\n%s", code, j.out)
	}
	checkClean(t, "GitHub recipe", ws)
}

// TestREADMEGitLabRecipe runs the README's GitLab CI recipe as a runner
// would, each script: and after_script: line in dash with a job's
// variables (the job's own `make` left out): the agent starts detached,
// a user connects with the printed command and logs out, and
// after_script's `agent wait` returns at once; the checkout stays clean.
func TestREADMEGitLabRecipe(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("dash"); err != nil {
		t.Fatal("dash not found: GitLab runners' /bin/sh on Debian; apt-get install dash")
	}
	r := distServer(t)
	c := sshtest.New(t)
	block := yamlBlock(t, "# GitLab CI")
	var script []string
	for _, l := range listItems(block, "script") {
		if !strings.HasPrefix(l, "make ") {
			script = append(script, l)
		}
	}
	after := listItems(block, "after_script")
	if len(script) < 3 || len(after) != 1 {
		t.Fatalf("the GitLab recipe's script %q and after_script %q are not as expected", script, after)
	}

	ws, home := ciWorkspace(t), userHome(t, c)
	tmp := t.TempDir()
	env := []string{"HOME=" + t.TempDir(), "CI_JOB_ID=777", "CONVERGE_AUTHORIZED_KEYS=" + c.PublicKey, "TMPDIR=" + tmp,
		"CONVERGE_AGENT_SHA256=" + fileSum(t, bin("agent")) + "  agent-linux-" + runtime.GOARCH}
	t.Cleanup(func() { exec.Command(filepath.Join(tmp, "agent-777"), "wait", "--dir", ws).Run() })
	j := startShellJob(t, "dash", "set -e\n"+ciURLs(strings.Join(script, "\n"), r), ws, env...)
	if code := j.exit(t, "GitLab script"); code != 0 {
		t.Fatalf("GitLab script: exit %d, want 0 once the agent is detached:\n%s", code, j.out)
	}
	if id := connectAsPrinted(t, "GitLab recipe", j, home); id != "job-777" {
		t.Errorf("GitLab recipe: ID %q, want job-777", id)
	}
	a := startShellJob(t, "dash", strings.Join(after, "\n"), ws, env...)
	if code := a.exit(t, "GitLab after_script"); code != 0 {
		t.Errorf("GitLab after_script: exit %d, want 0:\n%s", code, a.out)
	}
	checkClean(t, "GitLab recipe", ws)
}
