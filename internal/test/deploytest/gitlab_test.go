package deploytest

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The GitLab CI template, run as a runner runs a job that extends
// .converge: the template's variables and GitLab's predefined ones in the
// environment, before_script and the job's script in one POSIX shell with
// -e (dash here, stricter than the bash most images have), after_script
// in a second one.

// glJob is one GitLab CI job on this machine that extends .converge.
type glJob struct {
	t          *testing.T
	projectDir string
	before     []string
	after      []string
	env        []string
	artifacts  []string // paths the template keeps
}

func newGitLabJob(t *testing.T, vars map[string]string) *glJob {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "gitlab", "converge.gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var tmpl map[string]struct {
		Variables    map[string]string `yaml:"variables"`
		BeforeScript []string          `yaml:"before_script"`
		AfterScript  []string          `yaml:"after_script"`
		Artifacts    struct {
			When  string   `yaml:"when"`
			Paths []string `yaml:"paths"`
		} `yaml:"artifacts"`
	}
	if err := yaml.Unmarshal(b, &tmpl); err != nil {
		t.Fatalf("the template: %v", err)
	}
	c, ok := tmpl[".converge"]
	if !ok || len(c.BeforeScript) == 0 || len(c.AfterScript) == 0 {
		t.Fatalf("the template has no hidden job .converge with before_script and after_script: %+v", tmpl)
	}
	j := &glJob{t: t, projectDir: t.TempDir(), before: c.BeforeScript, after: c.AfterScript, artifacts: c.Artifacts.Paths}
	if c.Artifacts.When != "always" || len(c.Artifacts.Paths) == 0 {
		t.Errorf("the template's artifacts %+v: want the records kept always, failed jobs too", c.Artifacts)
	}
	j.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "CI=true", "GITLAB_CI=true",
		"CI_JOB_ID=777", "CI_PROJECT_DIR=" + j.projectDir, "GITLAB_USER_LOGIN=alice"}
	for k, v := range c.Variables {
		j.env = append(j.env, k+"="+v)
	}
	for k, v := range vars {
		j.env = append(j.env, k+"="+v)
	}
	t.Cleanup(j.stopAgent)
	return j
}

// shell returns sh -e running lines, in the project directory.
func (j *glJob) shell(lines []string) *exec.Cmd {
	cmd := exec.Command("sh", "-e", "-c", strings.Join(lines, "\n"))
	cmd.Dir = j.projectDir
	cmd.Env = j.env
	return cmd
}

// script runs before_script and then the job's own lines, and returns
// what they printed.
func (j *glJob) script(lines ...string) (string, error) {
	out, err := j.shell(append(append([]string{}, j.before...), lines...)).CombinedOutput()
	return string(out), err
}

func (j *glJob) stopAgent() {
	b, err := os.ReadFile(filepath.Join(j.projectDir, ".converge", "agent.json"))
	if err != nil {
		return
	}
	var st struct{ PID int }
	if json.Unmarshal(b, &st) == nil && st.PID > 0 {
		if p, err := os.FindProcess(st.PID); err == nil {
			p.Kill()
		}
	}
}

func (j *glJob) agentState() map[string]any { return readAgentState(j.t, j.projectDir) }

// printedSSH is the ssh line the agent prints, indented and aligned.
var printedSSH = regexp.MustCompile(`^\s*ssh\s+(-oProxyCommand=.*)$`)

// fromLog picks the known_hosts line and the ssh command out of what the
// agent printed into the job log.
func fromLog(t *testing.T, log string) (known, ssh string) {
	t.Helper()
	lines := strings.Split(log, "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "Verify it:") && i+1 < len(lines) {
			known = strings.TrimSpace(lines[i+1])
		}
		if m := printedSSH.FindStringSubmatch(line); m != nil && ssh == "" {
			ssh = "ssh " + m[1]
		}
	}
	if known == "" || ssh == "" {
		t.Fatalf("the job log lacks the known_hosts line or the ssh command:\n%s", log)
	}
	return known, ssh
}

// TestGitLabTemplate: before_script starts the agent with the keys of
// the user who started the pipeline and lets the job's script run; the
// printed commands log in; after_script waits while the user is connected.
func TestGitLabTemplate(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newGitLabJob(t, map[string]string{
		"CONVERGE_SERVER":       r.HTTP,
		"CI_SERVER_URL":         keysServer(t, map[string]string{"alice": u.PublicKey}),
		"CONVERGE_AGENT_SHA256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  agent-other\n" + hostAgentSum(t) + "  " + hostAgent,
	})
	log, err := j.script("echo the job runs")
	if err != nil || !strings.Contains(log, "the job runs") || !strings.Contains(log, "matches CONVERGE_AGENT_SHA256") {
		t.Fatalf("before_script and script: %v\n%s", err, log)
	}
	known, ssh := fromLog(t, log)
	if !regexp.MustCompile(`-oHostKeyAlias=gl-777-[0-9a-f]{24} `).MatchString(ssh) {
		t.Errorf("ssh command %q: want the default ID gl-CI_JOB_ID- and 24 random hex digits", ssh)
	}
	u.trust(known)
	s := u.hold(ssh)
	after := start(t, j.shell(j.after))
	waitFor(t, "after_script to ask the agent to end when unused", func() bool { return j.agentState()["waiting"] == true })
	if after.exited() {
		t.Fatalf("after_script returned while a user was connected:\n%s", after.out)
	}
	s.end(t)
	if err := after.wait(t); err != nil || !strings.Contains(after.out.String(), "the last user logged out") {
		t.Errorf("after_script after the logout: %v\n%s", err, after.out)
	}
	// Who logged in, in the job log: alice's key, from her .keys URL.
	fp, err := exec.Command("ssh-keygen", "-l", "-f", u.KeyFile+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	if a := after.out.String(); !strings.Contains(a, "who logged in") || !strings.Contains(a, strings.Fields(string(fp))[1]) {
		t.Errorf("after_script does not say who logged in (%s):\n%s", strings.Fields(string(fp))[1], a)
	}
	// The artifacts hold the signed receipt.
	for _, f := range []string{"receipt.jsonl", "receipt.jsonl.sig"} {
		if _, err := os.Stat(filepath.Join(j.projectDir, j.artifacts[0], f)); err != nil {
			t.Errorf("artifacts path %s lacks %s: %v", j.artifacts[0], f, err)
		}
	}
	if out, err := exec.Command("git", "-C", j.projectDir, "init", "-q").CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	if out, err := exec.Command("git", "-C", j.projectDir, "status", "--porcelain").CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("the checkout is not clean after the job (%v):\n%s", err, out)
	}
}

// TestGitLabTemplateUnused: keys from a CI variable alone; nobody
// connects, so after_script ends the agent and returns at once. Without
// CONVERGE_SERVER the job fails and says what to set.
func TestGitLabTemplateUnused(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newGitLabJob(t, map[string]string{
		"CONVERGE_SERVER": r.HTTP, "CONVERGE_USER_KEYS": "false",
		"CONVERGE_AUTHORIZED_KEYS": u.PublicKey, "CONVERGE_ID": "gl-unused",
	})
	if log, err := j.script(); err != nil || !strings.Contains(log, `registered as "gl-unused"`) {
		t.Fatalf("before_script: %v\n%s", err, log)
	}
	out, err := j.shell(j.after).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nobody was connected") {
		t.Errorf("after_script: %v\n%s", err, out)
	}
	if st := j.agentState(); st["exited"] != true || st["exit_status"] != float64(0) {
		t.Errorf("agent state %v: want exited with 0", st)
	}

	bare := newGitLabJob(t, nil)
	if log, err := bare.script("echo the job runs"); err != nil || !strings.Contains(log, "set CONVERGE_SERVER") || !strings.Contains(log, "the job runs") {
		t.Errorf("a job without CONVERGE_SERVER: %v, want a warning and the job going on\n%s", err, log)
	}
}

// TestGitLabTemplateCannotStart: when the agent cannot start (a user with
// no SSH keys, the server down, an ID the server refuses, nothing to
// download), before_script warns and the job's script runs and passes;
// after_script does not fail either. Before, each failed the job.
func TestGitLabTemplateCannotStart(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	keys := keysServer(t, map[string]string{"alice": u.PublicKey})
	holder := newGitLabJob(t, map[string]string{"CONVERGE_SERVER": r.HTTP, "CI_SERVER_URL": keys, "CONVERGE_ID": "gl-taken"})
	if log, err := holder.script(); err != nil || !strings.Contains(log, `registered as "gl-taken"`) {
		t.Fatalf("the job holding gl-taken: %v\n%s", err, log)
	}
	down := startServer(t, nil) // serves the agent below, but is not where it registers
	for _, tc := range []struct {
		name string
		vars map[string]string
		want string
	}{
		{"no keys for the user", map[string]string{"CONVERGE_SERVER": r.HTTP, "CI_SERVER_URL": keysServer(t, nil)}, "alice.keys"},
		{"ID in use", map[string]string{"CONVERGE_SERVER": r.HTTP, "CI_SERVER_URL": keys, "CONVERGE_ID": "gl-taken"}, "gl-taken"},
		{"no agent to download", map[string]string{"CONVERGE_SERVER": down.HTTP, "CI_SERVER_URL": keys}, "404"},
		{"server down", map[string]string{"CONVERGE_SERVER": r.HTTP, "CI_SERVER_URL": keys, "CONVERGE_SERVER_DOWN": "1"}, "could not reach the server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newGitLabJob(t, tc.vars)
			lines := []string{"echo the job runs"}
			if tc.vars["CONVERGE_SERVER_DOWN"] != "" {
				// The agent downloads, then dials a port where nothing listens.
				j.before = append([]string{}, j.before...)
				j.before[0] = strings.Replace(j.before[0], `"$tmp/agent" "$@" "$ws"`, `"$tmp/agent" "$@" "ws://`+refusedAddr(t)+`"`, 1)
				if j.before[0] == strings.Join(newGitLabJob(t, tc.vars).before[:1], "") {
					t.Fatal("the template no longer runs the agent as \"$tmp/agent\" \"$@\" \"$ws\": update the test")
				}
			}
			log, err := j.script(lines...)
			if err != nil || !strings.Contains(log, "the job runs") {
				t.Fatalf("the job failed or did not run its script (%v):\n%s", err, log)
			}
			for _, want := range []string{"WARNING", "the job goes on", tc.want} {
				if !strings.Contains(log, want) {
					t.Errorf("the job log lacks %q:\n%s", want, log)
				}
			}
			if out, err := j.shell(j.after).CombinedOutput(); err != nil {
				t.Errorf("after_script: %v\n%s", err, out)
			}
		})
	}
}

// refusedAddr is a loopback address where nothing listens.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestGitLabTemplateFailedJob: a job runs past CONVERGE_CONNECT_TIMEOUT
// and then fails; the detached agent is still there, and after_script
// (CI_JOB_STATUS=failed) waits for a first login, then until the logout.
func TestGitLabTemplateFailedJob(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newGitLabJob(t, map[string]string{
		"CONVERGE_SERVER": r.HTTP, "CONVERGE_CONNECT_TIMEOUT": "6s",
		"CI_SERVER_URL": keysServer(t, map[string]string{"alice": u.PublicKey}),
	})
	// The job's own work outlasts the connect timeout before it fails.
	log, err := j.script("sleep 7", "false")
	if err == nil {
		t.Fatalf("the job's script passed, want it to fail:\n%s", log)
	}
	if st := j.agentState(); st["exited"] == true {
		t.Fatalf("the detached agent ended during the job (state %v):\n%s", st, log)
	}
	known, ssh := fromLog(t, log)
	u.trust(known)
	cmd := j.shell(j.after)
	cmd.Env = append(cmd.Env, "CI_JOB_STATUS=failed")
	after := start(t, cmd)
	waitFor(t, "after_script to say it waits for a login", func() bool { return strings.Contains(after.out.String(), "The job failed") })
	s := u.hold(ssh)
	s.end(t)
	if err := after.wait(t); err != nil || !strings.Contains(after.out.String(), "the last user logged out") {
		t.Errorf("after_script of the failed job: %v\n%s", err, after.out)
	}
}
