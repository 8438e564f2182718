package deploytest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The GitHub Action, run as a GitHub runner runs a node action: `node
// action/main.js` with the inputs as INPUT_* variables (defaults from
// action.yml for those not given), the run's GITHUB_* and RUNNER_*
// variables, the summary, output and state files; then `node
// action/post.js` with the saved state as STATE_* variables. The actor's
// keys come from a loopback server standing in for GITHUB_SERVER_URL.

// actionMeta is what the tests read of action.yml.
type actionMeta struct {
	Inputs map[string]struct {
		Required bool   `yaml:"required"`
		Default  string `yaml:"default"`
	} `yaml:"inputs"`
	Outputs map[string]any `yaml:"outputs"`
	Runs    struct {
		Using  string `yaml:"using"`
		Main   string `yaml:"main"`
		Post   string `yaml:"post"`
		PostIf string `yaml:"post-if"`
	} `yaml:"runs"`
}

func readAction(t *testing.T) actionMeta {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var m actionMeta
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("action.yml: %v", err)
	}
	return m
}

// ghJob is one GitHub Actions job on this machine.
type ghJob struct {
	t         *testing.T
	meta      actionMeta
	workspace string
	files     map[string]string // GITHUB_STEP_SUMMARY etc. → path
	vars      map[string]string // what GitHub sets besides inputs and files
	status    string            // job.status: success, failure or cancelled
}

// newJob prepares a job started by octocat, whose keys are served by the
// keys server at keysURL (GITHUB_SERVER_URL).
func newJob(t *testing.T, keysURL string) *ghJob {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node not found (%v): install nodejs, as .ci/run does; the Action's steps run on Node", err)
	}
	files := t.TempDir()
	j := &ghJob{t: t, meta: readAction(t), workspace: t.TempDir(), files: map[string]string{}, status: "success"}
	for _, f := range []string{"GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_STATE"} {
		j.files[f] = filepath.Join(files, strings.ToLower(f))
		if err := os.WriteFile(j.files[f], nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	j.vars = map[string]string{
		"CI": "true", "GITHUB_ACTIONS": "true",
		"GITHUB_ACTOR": "octocat", "GITHUB_SERVER_URL": keysURL,
		"GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_REPOSITORY": "octo/repo",
		"GITHUB_WORKSPACE": j.workspace, "RUNNER_TEMP": t.TempDir(),
		"HOME": t.TempDir(), "PATH": os.Getenv("PATH"),
	}
	j.vars["RUNNER_OS"] = map[string]string{"linux": "Linux", "darwin": "macOS", "windows": "Windows"}[runtime.GOOS]
	j.vars["RUNNER_ARCH"] = map[string]string{"amd64": "X64", "arm64": "ARM64"}[runtime.GOARCH]
	t.Cleanup(j.stopAgent)
	return j
}

// step returns `node action/<main|post>.js` as the runner starts it.
func (j *ghJob) step(which string, inputs map[string]string) *exec.Cmd {
	script := map[string]string{"main": j.meta.Runs.Main, "post": j.meta.Runs.Post}[which]
	cmd := exec.Command("node", filepath.Join(repoRoot, script))
	cmd.Dir = j.workspace
	for k, v := range j.vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	for k, v := range j.files {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	for name, in := range j.meta.Inputs {
		v, ok := inputs[name]
		if !ok {
			// The runner evaluates a default's expression as each step
			// runs; job.status is the only one action.yml uses.
			v = strings.ReplaceAll(in.Default, "${{ job.status }}", j.status)
		}
		if name == "agent-sha256" && !ok {
			// The agent built for these tests is no release's: its sum
			// stands in for the pinned ones (TestActionAgentSums checks those).
			v = hostAgentSum(j.t)
		}
		cmd.Env = append(cmd.Env, "INPUT_"+strings.ToUpper(strings.ReplaceAll(name, " ", "_"))+"="+v)
	}
	if which == "post" {
		for k, v := range j.keyValues("GITHUB_STATE") {
			cmd.Env = append(cmd.Env, "STATE_"+k+"="+v)
		}
	}
	return cmd
}

// run runs a step to its end and returns its output; it fails the test if
// the step fails.
func (j *ghJob) run(which string, inputs map[string]string) string {
	j.t.Helper()
	out, err := j.step(which, inputs).CombinedOutput()
	if err != nil {
		j.t.Fatalf("%s step: %v\n%s", which, err, out)
	}
	return string(out)
}

// keyValues reads a GITHUB_OUTPUT or GITHUB_STATE file (name=value lines).
func (j *ghJob) keyValues(file string) map[string]string {
	j.t.Helper()
	b, err := os.ReadFile(j.files[file])
	if err != nil {
		j.t.Fatal(err)
	}
	m := map[string]string{}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\n"), "="); ok {
			m[k] = v
		}
	}
	return m
}

func (j *ghJob) summary() string {
	j.t.Helper()
	b, err := os.ReadFile(j.files["GITHUB_STEP_SUMMARY"])
	if err != nil {
		j.t.Fatal(err)
	}
	return string(b)
}

// agentState reads the state file of the agent the action started.
func (j *ghJob) agentState() map[string]any { return readAgentState(j.t, j.workspace) }

// readAgentState reads the state file of the agent running in dir.
func readAgentState(t *testing.T, dir string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ".converge", "agent.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// stopAgent kills the agent the action left in the background, if any.
func (j *ghJob) stopAgent() {
	b, err := os.ReadFile(filepath.Join(j.workspace, ".converge", "agent.json"))
	if err != nil {
		return
	}
	var st struct{ PID int }
	if json.Unmarshal(b, &st) == nil && st.PID > 0 {
		if p, err := os.FindProcess(st.PID); err == nil {
			p.Kill()
		}
	}
	if j.t.Failed() {
		log, _ := os.ReadFile(filepath.Join(j.workspace, ".converge", "agent.log"))
		j.t.Logf("agent log:\n%s", log)
	}
}

// fromSummary picks the commands the summary shows: the line that adds the
// host key to known_hosts and the ssh command.
func fromSummary(t *testing.T, sum string) (trust, ssh string) {
	t.Helper()
	for line := range strings.Lines(sum) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "echo '") && strings.HasSuffix(line, ">> ~/.ssh/known_hosts"):
			trust = line
		case strings.HasPrefix(line, "ssh -oProxyCommand="):
			ssh = line
		}
	}
	if trust == "" || ssh == "" {
		t.Fatalf("the job summary lacks the known_hosts or the ssh command:\n%s", sum)
	}
	return trust, ssh
}

// TestActionMetadata: action.yml declares what the issue asks for and
// runs plain Node files that load nothing but Node's own modules.
func TestActionMetadata(t *testing.T) {
	m := readAction(t)
	var inputs []string
	for name := range m.Inputs {
		inputs = append(inputs, name)
	}
	slices.Sort(inputs)
	for _, want := range []string{"agent-sha256", "allow-untrusted-events", "authorized-keys", "connect-timeout", "detached", "expiry", "id", "job-status", "limit-access-to-actor", "server"} {
		if !slices.Contains(inputs, want) {
			t.Errorf("inputs %v lack %q", inputs, want)
		}
	}
	if m.Inputs["allow-untrusted-events"].Default != "false" {
		t.Errorf("allow-untrusted-events must default to false: %+v", m.Inputs["allow-untrusted-events"])
	}
	// A node action's post step cannot read the job's status but through
	// an input whose default the runner evaluates when the step runs.
	if d := m.Inputs["job-status"].Default; d != "${{ job.status }}" {
		t.Errorf("input job-status defaults to %q, want ${{ job.status }}", d)
	}
	if !m.Inputs["server"].Required || m.Inputs["limit-access-to-actor"].Default != "true" || m.Inputs["detached"].Default != "false" {
		t.Errorf("server must be required, limit-access-to-actor default true, detached default false: %+v", m.Inputs)
	}
	if _, ok := m.Outputs["id"]; !ok || len(m.Outputs) != 3 {
		t.Errorf("outputs %v, want id, ssh-command and records", m.Outputs)
	}
	if _, ok := m.Outputs["records"]; !ok {
		t.Errorf("outputs %v, want records", m.Outputs)
	}
	if _, ok := m.Outputs["ssh-command"]; !ok {
		t.Errorf("outputs %v, want id and ssh-command", m.Outputs)
	}
	if m.Runs.Using != "node24" || m.Runs.PostIf != "always()" {
		t.Errorf("runs: %+v, want node24 with post-if always()", m.Runs)
	}
	require := regexp.MustCompile(`require\(\s*'([^']*)'\s*\)`)
	for _, f := range []string{m.Runs.Main, m.Runs.Post, "action/run.js"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range require.FindAllStringSubmatch(string(b), -1) {
			if !strings.HasPrefix(r[1], "node:") && !strings.HasPrefix(r[1], "./") {
				t.Errorf("%s requires %q: only node: modules and the action's own files may be loaded", f, r[1])
			}
		}
	}
}

// TestActionDetached: with detached: true the main step downloads the
// agent from the server, starts it and returns; the summary's commands
// log in with the actor's key and verify the host key; the post step then
// waits while the user is connected and returns when they log out.
func TestActionDetached(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	out := j.run("main", map[string]string{"server": r.HTTP + "/", "detached": "true"})

	outputs := j.keyValues("GITHUB_OUTPUT")
	if !regexp.MustCompile(`^gh-4242-2-[0-9a-f]{24}$`).MatchString(outputs["id"]) {
		t.Errorf("default id %q: want gh-RUN_ID-RUN_ATTEMPT- and 24 random hex digits", outputs["id"])
	}
	sum := j.summary()
	trust, ssh := fromSummary(t, sum)
	if outputs["ssh-command"] != ssh {
		t.Errorf("output ssh-command %q, but the summary shows %q", outputs["ssh-command"], ssh)
	}
	for _, want := range []string{"-oProxyCommand=", "registered", "agent wait"} {
		if !strings.Contains(out, want) {
			t.Errorf("the step's log lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{r.HTTP + "/downloads", "@octocat", outputs["id"]} {
		if !strings.Contains(sum, want) {
			t.Errorf("the summary lacks %q:\n%s", want, sum)
		}
	}
	if b, err := os.ReadFile(filepath.Join(j.workspace, ".converge", ".gitignore")); err != nil || string(b) != "*\n" {
		t.Errorf(".converge/.gitignore: %q, %v; want * so the checkout stays clean", b, err)
	}

	u.shell(trust)
	s := u.hold(ssh)
	if !strings.Contains(s.p.out.String(), j.workspace) {
		t.Errorf("the session did not start in the workspace %s:\n%s", j.workspace, s.p.out)
	}
	post := start(t, j.step("post", map[string]string{"server": r.HTTP, "detached": "true"}))
	waitFor(t, "the post step to ask the agent to end when unused", func() bool { return j.agentState()["waiting"] == true })
	waitFor(t, "the post step to say it waits", func() bool { return strings.Contains(post.out.String(), "1 user(s) connected") })
	if post.exited() {
		t.Fatalf("the post step returned while a user was connected:\n%s", post.out)
	}
	s.end(t)
	if err := post.wait(t); err != nil || !strings.Contains(post.out.String(), "the last user logged out") {
		t.Errorf("post step after the logout: %v\n%s", err, post.out)
	}
}

// TestActionDetachedUnused: nobody connects, so the post step ends the
// agent and returns at once.
func TestActionDetachedUnused(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	j.run("main", map[string]string{"server": r.HTTP, "detached": "true", "id": "unused-job"})
	out := j.run("post", map[string]string{"server": r.HTTP, "detached": "true", "id": "unused-job"})
	if !strings.Contains(out, "nobody was connected") {
		t.Errorf("post step output:\n%s", out)
	}
	if st := j.agentState(); st["exited"] != true || st["exit_status"] != float64(0) {
		t.Errorf("agent state %v: want exited with 0", st)
	}
}

// TestActionForeground: by default the main step waits until the session
// ends; keys come from the authorized-keys input alone, the actor's are
// not fetched (the keys server knows nobody, which would stop the agent),
// and the post step does nothing.
func TestActionForeground(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, nil))
	inputs := map[string]string{
		"server": r.HTTP, "id": "fg-job", "limit-access-to-actor": "false",
		"authorized-keys": u.PublicKey, "connect-timeout": "2m", "expiry": "10m",
	}
	main := start(t, j.step("main", inputs))
	waitFor(t, "the summary", func() bool {
		if main.exited() {
			t.Fatalf("the main step ended before anyone connected: %v\n%s", main.err, main.out)
		}
		return strings.Contains(j.summary(), "ssh -oProxyCommand")
	})
	trust, ssh := fromSummary(t, j.summary())
	if !strings.Contains(ssh, "-oHostKeyAlias=fg-job") {
		t.Errorf("ssh command %q: want the id input fg-job", ssh)
	}
	u.shell(trust)
	if got := u.run(ssh, "echo hello from the job"); !strings.Contains(got, "hello from the job") {
		t.Errorf("ssh printed %q", got)
	}
	if err := main.wait(t); err != nil || !strings.Contains(main.out.String(), "the last user logged out") {
		t.Errorf("main step after the logout: %v\n%s", err, main.out)
	}
	// The records output holds the signed receipt once the agent ended.
	records := j.keyValues("GITHUB_OUTPUT")["records"]
	for _, f := range []string{"receipt.jsonl", "receipt.jsonl.sig"} {
		if _, err := os.Stat(filepath.Join(records, f)); records == "" || err != nil {
			t.Errorf("records output %q: no %s: %v", records, f, err)
		}
	}
	if out := j.run("post", inputs); strings.TrimSpace(out) != "" {
		t.Errorf("post step of a step that was not detached printed:\n%s", out)
	}
}

// TestActionPlatforms: each runner's RUNNER_OS and RUNNER_ARCH get the
// agent built for them from the server's /static/dist/ (files that only
// look like those executables here, so the step then cannot run them and
// warns), and runners without an agent are told so.
func TestActionPlatforms(t *testing.T) {
	dist := map[string][]byte{}
	for _, name := range []string{"agent-linux-amd64", "agent-linux-arm64", "agent-darwin-amd64", "agent-darwin-arm64", "agent-windows-amd64.exe"} {
		magic := map[string]string{"linux": "\x7fELF", "darwin": "\xcf\xfa\xed\xfe", "windows": "MZ"}[strings.Split(name, "-")[1]]
		dist[name] = []byte(magic + "\x00" + name)
	}
	delete(dist, hostAgent) // the host's own agent would run: the tests above do that
	r := startServer(t, dist)
	for _, tc := range []struct{ os, arch, want string }{
		{"Linux", "X64", "agent-linux-amd64"},
		{"Linux", "ARM64", "agent-linux-arm64"},
		{"macOS", "X64", "agent-darwin-amd64"},
		{"macOS", "ARM64", "agent-darwin-arm64"},
		{"Windows", "X64", "agent-windows-amd64.exe"},
		{"Windows", "ARM64", "agent-windows-amd64.exe"},
		{"Linux", "X86", ""},
		{"Linux", "ARM", ""},
	} {
		if dist[tc.want] == nil && tc.want != "" {
			continue
		}
		j := newJob(t, keysServer(t, nil))
		j.vars["RUNNER_OS"], j.vars["RUNNER_ARCH"] = tc.os, tc.arch
		var sums []string
		for _, b := range dist {
			sums = append(sums, fmt.Sprintf("%x", sha256.Sum256(b)))
		}
		out, err := j.step("main", map[string]string{"server": r.HTTP, "agent-sha256": strings.Join(sums, " ")}).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "::warning title=Converge::") {
			t.Errorf("%s %s: %v, want the step to warn and pass (a debugging aid never fails the job):\n%s", tc.os, tc.arch, err, out)
			continue
		}
		if tc.want == "" {
			if !strings.Contains(string(out), "no Converge agent for a "+tc.os+" "+tc.arch+" runner") {
				t.Errorf("%s %s: output does not say there is no agent:\n%s", tc.os, tc.arch, out)
			}
			continue
		}
		got, err := os.ReadFile(filepath.Join(j.vars["RUNNER_TEMP"], "converge", tc.want))
		if err != nil || string(got) != string(dist[tc.want]) {
			t.Errorf("%s %s: downloaded %q (%v), want %s from the server\n%s", tc.os, tc.arch, got, err, tc.want, out)
		}
	}
}

// TestActionNoLogin: nobody logs in. In the foreground the agent ends at
// the connect timeout and the step passes (the README promises the job
// goes on); detached, the agent outlives its connect timeout while the job
// runs, and the post step of a job that passed ends it at once.
func TestActionNoLogin(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	out := j.run("main", map[string]string{"server": r.HTTP, "id": "fg-nologin", "connect-timeout": "1s"})
	if !strings.Contains(out, "nobody logged in") {
		t.Errorf("the main step does not say nobody logged in:\n%s", out)
	}
	if st := j.agentState(); st["exited"] != true || st["no_login"] != true {
		t.Errorf("agent state %v: want exited, no_login", st)
	}

	d := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	inputs := map[string]string{"server": r.HTTP, "id": "bg-nologin", "detached": "true", "connect-timeout": "1s"}
	d.run("main", inputs)
	// The job's own steps outlast the connect timeout.
	time.Sleep(2 * time.Second)
	if st := d.agentState(); st["exited"] == true {
		t.Fatalf("the detached agent ended during the job: %v", st)
	}
	if out := d.run("post", inputs); !strings.Contains(out, "nobody was connected") {
		t.Errorf("post step of a job that passed:\n%s", out)
	}
}

// TestActionFailedJob: detached, the job fails after the connect timeout;
// the post step (job.status failure) waits for a first login, and then
// until the logout. When nobody comes it ends after the connect timeout,
// and passes.
func TestActionFailedJob(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	inputs := map[string]string{"server": r.HTTP, "detached": "true", "connect-timeout": "8s"}
	j.run("main", inputs)
	time.Sleep(9 * time.Second) // the job's steps, which then fail
	j.status = "failure"
	trust, ssh := fromSummary(t, j.summary())
	u.shell(trust)
	post := start(t, j.step("post", inputs))
	waitFor(t, "the post step to say it waits for a login", func() bool { return strings.Contains(post.out.String(), "The job failed") })
	s := u.hold(ssh)
	s.end(t)
	if err := post.wait(t); err != nil || !strings.Contains(post.out.String(), "the last user logged out") {
		t.Errorf("post step of the failed job: %v\n%s", err, post.out)
	}

	k := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	k.status = "failure"
	inputs = map[string]string{"server": r.HTTP, "detached": "true", "connect-timeout": "1s"}
	k.run("main", inputs)
	if out := k.run("post", inputs); !strings.Contains(out, "nobody logged in") {
		t.Errorf("post step of a failed job nobody looked into:\n%s", out)
	}
}

// TestActionCannotStart: the server is down, or the actor has no keys;
// the main step warns and passes, and the post step does nothing.
func TestActionCannotStart(t *testing.T) {
	r := startServer(t, agentDist(t))
	for _, tc := range []struct {
		name, server, want string
	}{
		{"server down", "http://" + refusedAddr(t), "could not download the agent"},
		{"no keys for the actor", r.HTTP, "octocat.keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJob(t, keysServer(t, nil))
			inputs := map[string]string{"server": tc.server, "detached": "true"}
			out, err := j.step("main", inputs).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "::warning title=Converge::") || !strings.Contains(string(out), tc.want) {
				t.Errorf("main step: %v, want it to warn (%q) and pass:\n%s", err, tc.want, out)
			}
			if out, err := j.step("post", inputs).CombinedOutput(); err != nil {
				t.Errorf("post step: %v\n%s", err, out)
			}
		})
	}
	// With run:, the step is the command: it runs as a plain step, and its
	// status is the step's, whatever became of Converge.
	j := newJob(t, keysServer(t, nil))
	out, err := j.step("main", map[string]string{"server": "http://" + refusedAddr(t), "run": "touch ran; exit 7"}).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || !strings.Contains(string(out), "::warning title=Converge::") {
		t.Errorf("run: with the server down: %v, want the warning and the command's status 7:\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(j.workspace, "ran")); err != nil {
		t.Errorf("run: with the server down: the command did not run: %v", err)
	}
}

// TestActionTriggeringActor: on a re-run, the keys let in are those of who
// re-ran it (GITHUB_TRIGGERING_ACTOR), not of the run's original actor;
// and events an outsider can trigger are refused unless the workflow opts
// in (issue 18, finding 7).
func TestActionTriggeringActor(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	keys := keysServer(t, map[string]string{"rerunner": u.PublicKey})

	j := newJob(t, keys)
	j.vars["GITHUB_TRIGGERING_ACTOR"] = "rerunner"
	j.run("main", map[string]string{"server": r.HTTP, "detached": "true", "id": "rerun-job"})
	if sum := j.summary(); !strings.Contains(sum, "@rerunner") || strings.Contains(sum, "@octocat") {
		t.Errorf("the summary should name @rerunner, who re-ran the job, not @octocat:\n%s", sum)
	}
	trust, ssh := fromSummary(t, j.summary())
	u.shell(trust)
	u.hold(ssh).end(t)

	for _, event := range []string{"pull_request_target", "issue_comment", "workflow_run"} {
		j := newJob(t, keys)
		j.vars["GITHUB_TRIGGERING_ACTOR"] = "rerunner"
		j.vars["GITHUB_EVENT_NAME"] = event
		out, _ := j.step("main", map[string]string{"server": r.HTTP, "detached": "true", "id": "evt-" + event}).CombinedOutput()
		if !strings.Contains(string(out), "refuses the "+event+" event") {
			t.Errorf("%s: the step did not refuse the actor's keys:\n%s", event, out)
		}
		if st, err := os.Stat(filepath.Join(j.workspace, ".converge", "agent.json")); err == nil {
			t.Errorf("%s: an agent was started (%v)", event, st.Name())
		}
	}
	j = newJob(t, keys)
	j.vars["GITHUB_TRIGGERING_ACTOR"] = "rerunner"
	j.vars["GITHUB_EVENT_NAME"] = "issue_comment"
	j.run("main", map[string]string{"server": r.HTTP, "detached": "true", "id": "evt-opted-in", "allow-untrusted-events": "true"})
	if !strings.Contains(j.summary(), "@rerunner") {
		t.Errorf("with allow-untrusted-events the agent should start for @rerunner:\n%s", j.summary())
	}
}

// TestActionWhoSummary: limit-access-to-users lets in the keys of the
// users named (from GITHUB_SERVER_URL/USER.keys), and once the session
// is over the post step writes who logged in (key fingerprint, where the
// key came from, when, for how long) into the job summary, from the
// agent's journal.
func TestActionWhoSummary(t *testing.T) {
	u := newUser(t)
	f := strings.Fields(u.PublicKey)
	r := startServer(t, agentDist(t))
	bob := strings.Fields(newUser(t).PublicKey)
	j := newJob(t, keysServer(t, map[string]string{"alice": f[0] + " " + f[1], "bob": bob[0] + " " + bob[1]}))
	inputs := map[string]string{"server": r.HTTP, "detached": "true", "id": "who-job",
		"limit-access-to-actor": "false", "limit-access-to-users": "alice, bob"}
	j.run("main", inputs)
	trust, ssh := fromSummary(t, j.summary())
	if !strings.Contains(j.summary(), "@alice @bob") {
		t.Errorf("the summary does not say alice and bob may log in:\n%s", j.summary())
	}
	u.shell(trust)
	if got := u.run(ssh, "echo hello"); !strings.Contains(got, "hello") {
		t.Fatalf("alice's login: %q", got)
	}
	out := j.run("post", inputs)
	fp, err := exec.Command("ssh-keygen", "-l", "-f", u.KeyFile+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	alice := strings.Fields(string(fp))[1]
	sum := j.summary()
	for _, want := range []string{"### Converge: who logged in", "| alice via 127.0.0.1:", alice, "/alice.keys", "| ssh |"} {
		if !strings.Contains(sum, want) {
			t.Errorf("the summary lacks %q:\n%s", want, sum)
		}
	}
	if !strings.Contains(out, alice) {
		t.Errorf("the post step's log lacks alice's key %s:\n%s", alice, out)
	}
}

// TestActionObservers: the observers input lets in the keys of the users
// named only to watch: bob may list shells, not run a command.
func TestActionObservers(t *testing.T) {
	alice, bob := newUser(t), newUser(t)
	a, b := strings.Fields(alice.PublicKey), strings.Fields(bob.PublicKey)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, map[string]string{"alice": a[0] + " " + a[1], "bob": b[0] + " " + b[1]}))
	inputs := map[string]string{"server": r.HTTP, "detached": "true", "id": "watch-job",
		"limit-access-to-actor": "false", "limit-access-to-users": "alice", "observers": "bob"}
	j.run("main", inputs)
	trust, ssh := fromSummary(t, j.summary())
	alice.shell(trust)
	bob.shell(trust)
	// alice stays logged in: the agent ends at the last logout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stay := alice.ssh(ctx, ssh, "echo in; sleep 60")
	out, _ := stay.StdoutPipe()
	if err := stay.Start(); err != nil {
		t.Fatal(err)
	}
	defer stay.Wait()
	defer cancel()
	if _, err := out.Read(make([]byte, 2)); err != nil {
		t.Fatalf("alice's session: %v", err)
	}
	if got := bob.run(ssh, "ls"); !strings.Contains(got, "No shell is running") {
		t.Errorf("bob's ls: %q, want the list of shells", got)
	}
	if got, err := bob.ssh(ctx, ssh, "echo hello").CombinedOutput(); err == nil || !strings.Contains(string(got), "observer key") {
		t.Errorf("bob's command: %v, %q; want a refusal naming the observer key", err, got)
	}
}
