package deploytest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The Action's run: and when:, and the GitLab template's converge_run
// with CONVERGE_WHEN: the step's command goes through `agent run`, and
// Converge comes in only when when says so.

// registrations is how many agents the server at base has registered.
func registrations(t *testing.T, base string) float64 {
	t.Helper()
	for line := range strings.Lines(get(t, base+"/metrics")) {
		if v, ok := strings.CutPrefix(line, "converge_agent_registrations_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatal("no converge_agent_registrations_total in /metrics")
	return 0
}

// exitOf runs cmd and returns its output and exit status.
func exitOf(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", cmd.Path, err)
	}
	return string(out), 0
}

// TestActionRun: run: runs the command as the step, in the workspace with
// the job's environment; success is the step's and registers nothing; a
// failure registers and, nobody connecting, keeps its status. when: rerun
// and debug let Converge in only on a re-run (with debug logging); else
// the command runs plainly, without even downloading the agent.
func TestActionRun(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	keys := keysServer(t, map[string]string{"octocat": u.PublicKey})
	in := func(run, when string) map[string]string {
		return map[string]string{"server": r.HTTP, "run": run, "when": when, "connect-timeout": "1s"}
	}

	j := newJob(t, keys)
	j.vars["STEP_VAR"] = "from-the-job"
	out, code := exitOf(t, j.step("main", in(`echo "step in $PWD with $STEP_VAR"; true | true`, "")))
	if code != 0 || !strings.Contains(out, "step in "+j.workspace+" with from-the-job") {
		t.Errorf("a passing run: status %d, want 0 and the command's output:\n%s", code, out)
	}
	if n := registrations(t, r.HTTP); n != 0 {
		t.Fatalf("a passing run registered %v agents, want 0", n)
	}

	for _, tt := range []struct {
		name, when string
		vars       map[string]string
		converge   bool
	}{
		{"failure", "", nil, true},
		{"rerun, first attempt", "rerun", map[string]string{"GITHUB_RUN_ATTEMPT": "1"}, false},
		{"rerun, second attempt", "rerun", map[string]string{"GITHUB_RUN_ATTEMPT": "2"}, true},
		{"debug, no debug logging", "debug", nil, false},
		{"debug logging", "debug", map[string]string{"RUNNER_DEBUG": "1"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := newJob(t, keys)
			for k, v := range tt.vars {
				j.vars[k] = v
			}
			before := registrations(t, r.HTTP)
			out, code := exitOf(t, j.step("main", in("echo about to fail; exit 4", tt.when)))
			if code != 4 {
				t.Errorf("status %d, want the command's 4:\n%s", code, out)
			}
			registered := registrations(t, r.HTTP) > before
			if registered != tt.converge || strings.Contains(out, "Downloading") != tt.converge {
				t.Errorf("registered %v, want %v:\n%s", registered, tt.converge, out)
			}
			if tt.converge && !strings.Contains(out, "`echo about to fail; exit 4` failed with exit status 4") {
				t.Errorf("the log does not say what failed:\n%s", out)
			}
			if sum := j.summary(); tt.converge != strings.Contains(sum, "Nobody logged in") {
				t.Errorf("the job summary after the wait (converge %v):\n%s", tt.converge, sum)
			}
		})
	}

	j = newJob(t, keys)
	out, code = exitOf(t, j.step("main", in("touch ran; exit 5", "always")))
	if code != 5 || !strings.Contains(out, "--break-before") || !strings.Contains(out, "nobody decided; running") {
		t.Errorf("when: always: status %d, want 5 after a break before the command:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(j.workspace, "ran")); err != nil {
		t.Errorf("when: always: the command did not run after the break: %v", err)
	}
	if out, code := exitOf(t, j.step("main", in("true", "sometimes"))); code == 0 || !strings.Contains(out, "not one of") {
		t.Errorf("when: sometimes: status %d, want a failure naming the choices:\n%s", code, out)
	}

	// Without run:, when: decides whether the agent starts at all.
	j = newJob(t, keys)
	j.vars["GITHUB_RUN_ATTEMPT"] = "1"
	out, code = exitOf(t, j.step("main", map[string]string{"server": r.HTTP, "when": "rerun", "detached": "true"}))
	if code != 0 || !strings.Contains(out, "not started") || strings.Contains(out, "Downloading") {
		t.Errorf("when: rerun on a first attempt, no run: status %d, want 0 and no agent:\n%s", code, out)
	}
}

// newGitLabRunJob is a GitLab CI job that extends .converge-run.
func newGitLabRunJob(t *testing.T, vars map[string]string) *glJob {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "gitlab", "converge.gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var tmpl map[string]struct {
		Variables    map[string]string `yaml:"variables"`
		BeforeScript []string          `yaml:"before_script"`
	}
	if err := yaml.Unmarshal(b, &tmpl); err != nil {
		t.Fatalf("the template: %v", err)
	}
	c, ok := tmpl[".converge-run"]
	if !ok || len(c.BeforeScript) == 0 {
		t.Fatalf("the template has no hidden job .converge-run with a before_script: %+v", tmpl)
	}
	j := &glJob{t: t, projectDir: t.TempDir(), before: c.BeforeScript}
	j.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "CI=true", "GITLAB_CI=true",
		"CI_JOB_ID=778", "CI_PROJECT_DIR=" + j.projectDir, "GITLAB_USER_LOGIN=alice"}
	for k, v := range c.Variables {
		j.env = append(j.env, k+"="+v)
	}
	for k, v := range vars {
		j.env = append(j.env, k+"="+v)
	}
	return j
}

// TestGitLabRun: converge_run passes a succeeding command through with
// no registration; a failing one registers and keeps its status; with
// CONVERGE_WHEN rerun or debug, Converge comes in only on a retry or with
// debug logging.
func TestGitLabRun(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	keys := keysServer(t, map[string]string{"alice": u.PublicKey})
	vars := func(more ...string) map[string]string {
		m := map[string]string{"CONVERGE_SERVER": r.HTTP, "CI_SERVER_URL": keys, "CONVERGE_CONNECT_TIMEOUT": "1s"}
		for i := 0; i+1 < len(more); i += 2 {
			m[more[i]] = more[i+1]
		}
		return m
	}
	j := newGitLabRunJob(t, vars())
	out, code := exitOf(t, j.shell(append(j.before, `converge_run 'echo "in $PWD"'`, `converge_run test -d .converge`)))
	if code != 0 || !strings.Contains(out, "in "+j.projectDir) {
		t.Errorf("passing commands: status %d, want 0:\n%s", code, out)
	}
	if n := registrations(t, r.HTTP); n != 0 {
		t.Fatalf("passing commands registered %v agents, want 0", n)
	}
	for _, tt := range []struct {
		name     string
		vars     map[string]string
		converge bool
	}{
		{"failure", vars(), true},
		{"rerun, first attempt", vars("CONVERGE_WHEN", "rerun"), false},
		{"rerun, a retry", vars("CONVERGE_WHEN", "rerun", "CI_JOB_RETRY_COUNT", "1"), true},
		{"debug, no debug logging", vars("CONVERGE_WHEN", "debug"), false},
		{"debug logging", vars("CONVERGE_WHEN", "debug", "CI_DEBUG_TRACE", "true"), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := newGitLabRunJob(t, tt.vars)
			before := registrations(t, r.HTTP)
			out, code := exitOf(t, j.shell(append(j.before, "converge_run 'exit 3'", "echo not reached")))
			if code != 3 || strings.Contains(out, "not reached") {
				t.Errorf("status %d, want 3 and the job stopped:\n%s", code, out)
			}
			if registered := registrations(t, r.HTTP) > before; registered != tt.converge {
				t.Errorf("registered %v, want %v:\n%s", registered, tt.converge, out)
			}
			if tt.converge && !strings.Contains(out, "`exit 3` failed with exit status 3") {
				t.Errorf("the log does not say what failed:\n%s", out)
			}
		})
	}
}
