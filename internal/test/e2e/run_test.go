package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// `agent run -- CMD` end to end: the real agent binary wrapping a real
// command, the server counting registrations, real ssh into the failed
// step.

const registrations = "converge_agent_registrations_total"

// startStep runs `agent run flags... URL -- command...` in dir with the
// test's environment less its CONVERGE_ variables, plus env. It does not
// wait for anything; see registered and exit.
func startStep(t *testing.T, r *relay, dir string, env, flags []string, command ...string) *agentProc {
	t.Helper()
	args := append(append(append([]string{"run"}, flags...), r.URL, "--"), command...)
	p := spawnAgent(t, dir, env, strings.NewReader(""), args...)
	return p
}

// registered waits until the agent registered, and makes c trust the
// host key it printed for id.
func (p *agentProc) registered(c *sshtest.Client, id string) {
	p.t.Helper()
	waitFor(p.t, "agent registration", func() bool {
		if !p.running() {
			p.t.Fatalf("agent run exited with %d before registering:\n%s", p.code, p.All)
		}
		return strings.Contains(p.Out.String(), "registered")
	})
	if c != nil {
		trustPrinted(p.t, c, id, p.Out.String())
	}
}

// TestRunPasses: a command that succeeds passes through: its output and
// status are the step's, and the server never hears of the agent.
func TestRunPasses(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	dir := t.TempDir()
	p := startStep(t, r, dir, []string{"STEP_VAR=job-value"}, []string{"--id", "run-passes"},
		"sh", "-c", `echo "out $STEP_VAR $(pwd)"; echo err >&2`)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if want := "out job-value " + dir + "\n"; p.Out.String() != want {
		t.Errorf("stdout %q, want %q (the command's, nothing else)", p.Out.String(), want)
	}
	if got := p.All.String(); strings.Count(got, "\n") != 2 || !strings.Contains(got, "err\n") {
		t.Errorf("output %q, want the command's two lines only", got)
	}
	if n := metric(t, r.HTTP, registrations); n != 0 {
		t.Errorf("%s = %v, want 0: a passing step makes no connection", registrations, n)
	}
}

// TestRunFailureKeepsStatus: a failing command registers the agent, says
// what failed; nobody connects, and the step ends with the command's
// own status, whether a code or a signal.
func TestRunFailureKeepsStatus(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	for _, tt := range []struct {
		script string
		want   int
	}{
		{"exit 1", 1},
		{"exit 2", 2},
		{"kill -INT $$", 130},
		{"kill -KILL $$", 137},
	} {
		t.Run(fmt.Sprint(tt.want), func(t *testing.T) {
			t.Parallel()
			c := sshtest.New(t)
			id := fmt.Sprint("run-status-", tt.want)
			p := startStep(t, r, keyDir(t, c), []string{"CONVERGE_CONNECT_TIMEOUT=1s"}, []string{"--id", id}, "sh", "-c", tt.script)
			p.registered(nil, id)
			if code := p.exit(); code != tt.want {
				t.Errorf("exit status %d, want %d", code, tt.want)
			}
			out := p.Out.String()
			for _, want := range []string{
				fmt.Sprintf("`%s` failed with exit status %d", tt.script, tt.want),
				"ssh  -oProxyCommand=",
				fmt.Sprintf("nobody connected in time; the step ends with `%s`'s exit status %d", tt.script, tt.want),
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestRunShellIsTheStep: the shell of the person who connects to a failed
// step starts in its directory, with its environment less the agent's
// secrets, and the failed command in its history.
func TestRunShellIsTheStep(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	dir := keyDir(t, c)
	script := `test -f fixed || { echo "not fixed"; exit 2; }`
	p := startStep(t, r, dir, []string{"STEP_VAR=job-value", "CONVERGE_PASSWORD=agent-secret"},
		[]string{"--id", "run-shell", "--shell", "bash"}, "sh", "-c", script)
	p.registered(c, "run-shell")
	tgt := r.target("run-shell")
	tm := startTerm(t, c, tgt, 120, 30) // logged in throughout: the last logout ends the wait
	tm.waitScreen("[converge]")
	tm.typeLine("history | tail -n 3 | sed 's/^ *[0-9]* *//'; echo history-$((40+2))")
	tm.waitScreen("history-42")
	if !strings.Contains(tm.screen(), "\n"+script+"\n") {
		t.Errorf("the shell's history lacks the failed command %q:\n%s", script, tm.screen())
	}
	got := c.SSH(tgt, 0, `pwd; echo "var=$STEP_VAR pw=${CONVERGE_PASSWORD:-none}"`)
	if want := dir + "\nvar=job-value pw=none\n"; got.Stdout != want {
		t.Errorf("session: %q, want %q", got.Stdout, want)
	}
	tm.typeLine("exit")
	tm.exitStatus()
	if code := p.exit(); code != 2 {
		t.Errorf("exit status %d after the last logout, want the command's 2", code)
	}
}

// TestRunBreakBefore: with --break-before the agent registers before the
// command runs; when nobody decides, it runs then, and its status is the
// step's.
func TestRunBreakBefore(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	dir := keyDir(t, c)
	p := startStep(t, r, dir, []string{"CONVERGE_CONNECT_TIMEOUT=2s"}, []string{"--id", "run-break", "--break-before"},
		"sh", "-c", "touch ran; exit 3")
	p.registered(c, "run-break")
	if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
		t.Fatal("the command ran before anyone could look")
	}
	if got := c.SSH(r.target("run-break"), 0, "ls ran 2>&1 || echo not-yet"); !strings.Contains(got.Stdout, "not-yet") {
		t.Errorf("in the session: %q, want the command not run yet", got.Stdout)
	}
	if code := p.exit(); code != 3 {
		t.Errorf("exit status %d, want 3 (the command, run once nobody decided)", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "ran")); err != nil {
		t.Errorf("the command did not run after the break: %v", err)
	}
}

// failingStep starts `agent run` on a command that fails with 2 until a
// file named fixed exists in its directory, and waits for it to register
// as id; c may log in.
func failingStep(t *testing.T, r *relay, c *sshtest.Client, id string, flags ...string) *agentProc {
	t.Helper()
	p := startStep(t, r, keyDir(t, c), nil, append([]string{"--id", id}, flags...),
		"sh", "-c", `test -f fixed || { echo "not fixed"; exit 2; }; echo "fixed, passing"`)
	p.registered(c, id)
	return p
}

// TestRunRetry: a person connects to the failed step, runs `converge
// retry` (it fails again, output in their terminal and the job's log),
// fixes the cause, retries, and once they log out the step succeeds.
func TestRunRetry(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	p := failingStep(t, r, c, "run-retry")
	tgt := r.target("run-retry")
	tm := startTerm(t, c, tgt, 120, 30) // logged in throughout: the last logout ends the wait
	tm.waitScreen("[converge]")

	again := c.SSH(tgt, 2, "converge retry")
	if !strings.Contains(again.Stdout, "not fixed") || !strings.Contains(again.Stderr, "failed with exit status 2") {
		t.Errorf("a retry that fails: stdout %q, stderr %q", again.Stdout, again.Stderr)
	}
	if !p.running() {
		t.Fatalf("the agent ended after a failed retry (%d); it should wait again", p.code)
	}
	fixed := c.SSH(tgt, 0, "touch fixed && converge retry")
	if !strings.Contains(fixed.Stdout, "fixed, passing") || !strings.Contains(fixed.Stdout, "the step succeeds once everyone has logged out") {
		t.Errorf("a retry that passes: stdout %q, stderr %q", fixed.Stdout, fixed.Stderr)
	}
	if !p.running() {
		t.Fatalf("the agent ended (%d) while someone was still logged in", p.code)
	}
	tm.typeLine("exit")
	if code := p.exit(); code != 0 {
		t.Errorf("exit status %d after a passing retry, want 0", code)
	}
	out := p.Out.String()
	for _, want := range []string{"runs `" + `test -f fixed || { echo "not fixed"; exit 2; }; echo "fixed, passing"` + "` again", "fixed, passing\n", "passed on a retry by"} {
		if !strings.Contains(out, want) {
			t.Errorf("the job's log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "not fixed\n"); n != 2 {
		t.Errorf("the job's log shows the failure %d times, want 2 (the first run, the failed retry):\n%s", n, out)
	}
	if j := journalOf(t, p.All.String()); !strings.Contains(j, `"decision":"retry"`) || !strings.Contains(j, `"status":0`) {
		t.Errorf("the journal lacks the passing retry:\n%s", j)
	}
}

// journalOf reads the journal whose path the agent logged.
func journalOf(t *testing.T, log string) string {
	t.Helper()
	m := regexp.MustCompile(`journal=(\S+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("the agent logged no journal path:\n%s", log)
	}
	b, err := os.ReadFile(strings.Trim(m[1], `"`))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRunPassAndFail: `converge pass` ends the step at once with 0, the
// job's log saying it was passed by hand; `converge fail` with the
// command's status. Both are in the journal.
func TestRunPassAndFail(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	for _, tt := range []struct {
		decision string
		want     int
		log      string
	}{
		{"pass", 0, "passed by hand by "},
		{"fail", 2, "failed by hand by "},
	} {
		t.Run(tt.decision, func(t *testing.T) {
			t.Parallel()
			c := sshtest.New(t)
			id := "run-" + tt.decision
			p := failingStep(t, r, c, id)
			tm := startTerm(t, c, r.target(id), 120, 30) // a shell that stays: the decision ends the agent, not a logout
			tm.waitScreen("[converge]")
			tm.typeLine("converge " + tt.decision)
			if code := p.exit(); code != tt.want {
				t.Errorf("exit status %d after converge %s, want %d", code, tt.decision, tt.want)
			}
			tm.waitScreen("by hand")
			if !strings.Contains(p.Out.String(), tt.log) {
				t.Errorf("the job's log lacks %q:\n%s", tt.log, p.Out)
			}
			if j := journalOf(t, p.All.String()); !strings.Contains(j, `"decision":"`+tt.decision+`"`) {
				t.Errorf("the journal lacks the decision:\n%s", j)
			}
		})
	}
}

// TestRunBreakBeforeRetry: with --break-before, `converge retry` runs the
// command for the first time; it passes, and the step with it.
func TestRunBreakBeforeRetry(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	dir := keyDir(t, c)
	p := startStep(t, r, dir, nil, []string{"--id", "run-break-retry", "--break-before"}, "sh", "-c", "touch ran")
	p.registered(c, "run-break-retry")
	got := c.SSH(r.target("run-break-retry"), 0, "test ! -e ran && converge status && converge retry")
	if !strings.Contains(got.Stdout, "has not run yet") {
		t.Errorf("converge status before the first run: %q", got.Stdout)
	}
	if code := p.exit(); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "ran")); err != nil {
		t.Errorf("the command did not run: %v", err)
	}
}

// TestRunExtendAndStatus: converge extend holds the agent past the last
// logout, and converge status says until when.
func TestRunExtendAndStatus(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	p := failingStep(t, r, c, "run-extend")
	tgt := r.target("run-extend")
	got := c.SSH(tgt, 0, "converge extend 1h && converge status")
	for _, want := range []string{"held until at least", "Step: `", "failed with exit status 2", "Held (converge extend, or .hold) until"} {
		if !strings.Contains(got.Stdout, want) {
			t.Errorf("converge extend and status lack %q:\n%s", want, got.Stdout)
		}
	}
	// Held: the logout above did not end it; a decision does.
	if got := c.SSH(tgt, 0, "converge status"); !strings.Contains(got.Stdout, "Logged in: 1") {
		t.Errorf("converge status: %q", got.Stdout)
	}
	if bad := c.SSH(tgt, 2, "converge extend soon"); !strings.Contains(bad.Stderr, "no duration") {
		t.Errorf("converge extend soon: %q", bad.Stderr)
	}
	c.Run("ssh", tgt, "", tgt.Dest(), "converge fail")
	if code := p.exit(); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
}

// TestRunCancelled: the job is cancelled while the command runs (SIGTERM
// to the agent): the command gets the signal, the agent exits with its
// status and registers nothing; a cancelled job has no time for a shell.
func TestRunCancelled(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	p := startStep(t, r, keyDir(t, c), nil, []string{"--id", "run-cancelled"},
		"sh", "-c", `trap 'echo got TERM; exit 143' TERM; echo ready; while :; do sleep 0.1; done`)
	waitFor(t, "the command to start", func() bool { return strings.Contains(p.Out.String(), "ready") })
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exit(); code != 143 {
		t.Errorf("exit status %d, want the command's 143", code)
	}
	if !strings.Contains(p.Out.String(), "got TERM") || strings.Contains(p.Out.String(), "registered") {
		t.Errorf("output:\n%s\nwant the command to get SIGTERM and no registration", p.All)
	}
	if n := metric(t, r.HTTP, registrations); n != 0 {
		t.Errorf("%s = %v, want 0", registrations, n)
	}
}
