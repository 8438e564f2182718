package deploytest

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// The agent a job runs is code the Converge server serves. The Action and
// the GitLab template check its SHA-256 against sums the server does not
// control before making it executable, and refuse plain http:// and ws://
// servers other than this machine (issue 18, finding 1).

// hostAgentSum is the SHA-256 of the agent built for these tests.
func hostAgentSum(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(bin("agent"))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// fakeAgent builds a program that a server could serve in place of the
// agent: it leaves a file behind to show it ran. It returns the program
// and that file.
func fakeAgent(t *testing.T) (prog []byte, ran string) {
	t.Helper()
	dir := t.TempDir()
	ran = filepath.Join(dir, "the-fake-agent-ran")
	src := "package main\n\nimport \"os\"\n\nfunc main() { os.WriteFile(" + fmt.Sprintf("%q", ran) + ", nil, 0o644) }\n"
	write(t, filepath.Join(dir, "main.go"), []byte(src))
	write(t, filepath.Join(dir, "go.mod"), []byte("module fake\n"))
	cmd := exec.Command("go", "build", "-o", "fake", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the fake agent: %v\n%s", err, out)
	}
	prog, err := os.ReadFile(filepath.Join(dir, "fake"))
	if err != nil {
		t.Fatal(err)
	}
	return prog, ran
}

// TestActionRefusesTamperedAgent: an agent the server changed is not run,
// whether the sums come from the Action's pinned action/agent.sha256 or
// from the agent-sha256 input, and the step says why.
func TestActionRefusesTamperedAgent(t *testing.T) {
	prog, ran := fakeAgent(t)
	r := startServer(t, map[string][]byte{hostAgent: prog})
	for _, sums := range []string{"", hostAgentSum(t)} {
		j := newJob(t, keysServer(t, nil))
		out, _ := j.step("main", map[string]string{"server": r.HTTP, "agent-sha256": sums, "authorized-keys": "ssh-ed25519 AAAA x"}).CombinedOutput()
		if _, err := os.Stat(ran); err == nil {
			t.Fatalf("agent-sha256 %q: the tampered agent ran:\n%s", sums, out)
		}
		if !strings.Contains(string(out), "::error") || !strings.Contains(string(out), "not running it") {
			t.Errorf("agent-sha256 %q: the step does not say loudly that it refused the agent:\n%s", sums, out)
		}
		if _, err := os.Stat(filepath.Join(j.vars["RUNNER_TEMP"], "converge", hostAgent)); err == nil {
			t.Errorf("agent-sha256 %q: the refused agent was left in place", sums)
		}
	}
}

// TestActionRefusesPlainText: http:// and ws:// servers are refused before
// anything is downloaded, unless they are this machine.
func TestActionRefusesPlainText(t *testing.T) {
	for _, server := range []string{
		"http://converge.example.com", "ws://10.0.0.7:8000", "http://127.0.0.1.example.com",
		"http://localhost.example.com:80", "http://127.0.0.1@example.com",
	} {
		j := newJob(t, keysServer(t, nil))
		// Whether the job goes on is issue 26's rule; the refusal is an error in the log.
		out, _ := j.step("main", map[string]string{"server": server}).CombinedOutput()
		if !strings.Contains(string(out), "::error") || !strings.Contains(string(out), "plain http:// and ws:// only to localhost") || strings.Contains(string(out), "Downloading") {
			t.Errorf("server %s: want refused before the download:\n%s", server, out)
		}
	}
}

// TestGitLabRefusesTamperedAgent: with CONVERGE_AGENT_SHA256 the
// template does not run an agent the server changed, nor the job's script.
func TestGitLabRefusesTamperedAgent(t *testing.T) {
	prog, ran := fakeAgent(t)
	r := startServer(t, map[string][]byte{hostAgent: prog})
	j := newGitLabJob(t, map[string]string{
		"CONVERGE_SERVER": r.HTTP, "CONVERGE_USER_KEYS": "false", "CONVERGE_AUTHORIZED_KEYS": "ssh-ed25519 AAAA x",
		"CONVERGE_AGENT_SHA256": hostAgentSum(t),
	})
	log, _ := j.script("echo the job runs")
	if _, err := os.Stat(ran); err == nil {
		t.Fatalf("the tampered agent ran:\n%s", log)
	}
	if !strings.Contains(log, "ERROR") || !strings.Contains(log, "not running it") {
		t.Errorf("before_script: want it to refuse the agent and say so:\n%s", log)
	}
}

// TestGitLabRefusesPlainText: http:// and ws:// servers other than this
// machine are refused before the download.
func TestGitLabRefusesPlainText(t *testing.T) {
	for _, server := range []string{"http://converge.example.com", "ws://10.0.0.7:8000", "http://127.0.0.1.example.com"} {
		j := newGitLabJob(t, map[string]string{"CONVERGE_SERVER": server, "CONVERGE_AUTHORIZED_KEYS": "ssh-ed25519 AAAA x"})
		log, _ := j.script("echo the job runs")
		if !strings.Contains(log, "plain http:// and ws:// only to localhost") || strings.Contains(log, "downloading") {
			t.Errorf("server %s: want refused before the download:\n%s", server, log)
		}
	}
}

// TestActionAgentSums: the pinned sums name every agent `make dist`
// builds and record how they were built; and `make action-sums`, run end
// to end for one platform into a temporary file, pins exactly the bytes
// `make dist` builds with the same VERSION. Only linux/amd64 is built
// (twice, the second from Go's cache): all five agents take minutes.
func TestActionAgentSums(t *testing.T) {
	pinned := readSums(t, filepath.Join(repoRoot, "action", "agent.sha256"))
	for _, name := range []string{"agent-linux-amd64", "agent-linux-arm64", "agent-darwin-amd64", "agent-darwin-arm64", "agent-windows-amd64.exe"} {
		if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(pinned[name]) {
			t.Errorf("action/agent.sha256 pins %q for %s, want 64 hex digits", pinned[name], name)
		}
	}
	for _, key := range []string{"# version", "# go"} {
		if pinned[key] == "" {
			t.Errorf("action/agent.sha256 does not record %s: a release must be rebuilt the same way", key)
		}
	}
	if runtime.GOOS != "linux" {
		return
	}
	tmp := t.TempDir()
	sums := filepath.Join(tmp, "agent.sha256")
	make := func(args ...string) {
		cmd := exec.Command("make", append([]string{"--no-print-directory", "DIST_PLATFORMS=linux/amd64"}, args...)...)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %v: %v\n%s", args, err, out)
		}
	}
	make("action-sums", "RELEASE=v0.0.0-sumtest", "AGENT_SUMS="+sums)
	make("dist-bins", "VERSION=v0.0.0-sumtest", "DIST_CMDS=agent", "DISTDIR="+tmp)
	got := readSums(t, sums)
	b, err := os.ReadFile(filepath.Join(tmp, "agent-linux-amd64"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%x", sha256.Sum256(b)); got["agent-linux-amd64"] != want || got["# version"] != "v0.0.0-sumtest" {
		t.Errorf("make action-sums pinned %s (version %q), make dist built %s", got["agent-linux-amd64"], got["# version"], want)
	}
}

// readSums reads a sums file: name → sum, and "# key" → value for its
// "# key: value" comments.
func readSums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(line, "# ") {
			m[k] = v
			continue
		}
		if f := strings.Fields(line); len(f) == 2 {
			m[strings.TrimPrefix(f[1], "*")] = f[0]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}
