package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// The session lifetime, end to end: the real agent binary (exit statuses
// are part of the contract), real ssh, durations of a few seconds.

// startAgentProc runs `agent args... --id id URL` in a fresh directory
// whose .authorized_keys holds c's key, waits for it to register, and
// makes c trust the host key it printed.
func startAgentProc(t *testing.T, r *relay, id string, c *sshtest.Client, args ...string) *agentProc {
	t.Helper()
	p := runAgentBinary(t, r, keyDir(t, c), nil, append(args, "--id", id)...)
	trustPrinted(t, c, id, p.Out.String())
	return p
}

// trustPrinted adds the known_hosts line the agent printed for id.
func trustPrinted(t *testing.T, c *sshtest.Client, id, printed string) {
	t.Helper()
	for _, line := range strings.Split(printed, "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, id+" ssh-") {
			f, err := os.OpenFile(c.KnownHosts, os.O_APPEND|os.O_WRONLY, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString(line + "\n"); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("the agent printed no known_hosts line for %s:\n%s", id, printed)
}

// agentState reads the state file the agent keeps in dir.
func agentState(t *testing.T, dir string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, lifetime.StateDir, "agent.json"))
	if err != nil {
		t.Fatalf("read the agent's state: %v", err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file: %v\n%s", err, b)
	}
	return st
}

// TestLifetimeNoLogin: nobody logs in before --connect-timeout, and the
// agent exits with the documented status: 0 by default so that the job goes
// on, or the one --no-login-status asks for.
func TestLifetimeNoLogin(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	env := []string{"CONVERGE_CONNECT_TIMEOUT=1s"} // the flag's environment twin
	p := runAgentBinary(t, r, keyDir(t, c), env, "--id", "nologin-default")
	if code := p.exit(); code != 0 {
		t.Fatalf("exit status %d, want 0 (nobody logged in, default)", code)
	}
	// The state file, which the Action and `agent wait` read, records the
	// same status the process exits with.
	if st := agentState(t, p.Dir); st["exited"] != true || st["exit_status"] != float64(0) || st["no_login"] != true {
		t.Errorf("state file %v: want exited with status 0 and no_login", st)
	}
	env = append(env, "CONVERGE_NO_LOGIN_STATUS=3")
	p = runAgentBinary(t, r, keyDir(t, c), env, "--id", "nologin-job")
	if code := p.exit(); code != 3 {
		t.Fatalf("exit status %d, want 3 (nobody logged in, --no-login-status 3)", code)
	}
	if !strings.Contains(p.All.String(), "nobody logged in within 1s (--connect-timeout)") {
		t.Errorf("the agent did not say why it exited:\n%s", p.All)
	}
	if st := agentState(t, p.Dir); st["exited"] != true || st["exit_status"] != float64(3) {
		t.Errorf("state file %v: want exited with status 3", st)
	}
}

// TestLifetimeFlagErrors: bad lifetime durations are usage errors.
func TestLifetimeFlagErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--expiry", "-1s", "ws://localhost:1"}, "expiry is negative"},
		{[]string{"--connect-timeout", "soon", "ws://localhost:1"}, "connect-timeout"},
		{[]string{"--max-session", "-5m", "ws://localhost:1"}, "max session is negative"},
	} {
		cmd := exec.Command(bin("agent"), tc.args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != lifetime.ExitUsage || !strings.Contains(string(out), tc.want) {
			t.Errorf("agent %q: %v, output %q; want exit 2 mentioning %q", tc.args, err, out, tc.want)
		}
	}
}

// TestLifetimeLastLogout: by default the agent exits with status 0 once
// the last user logs out.
func TestLifetimeLastLogout(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	p := startAgentProc(t, r, "logout-job", c, "--connect-timeout", "30s")
	tgt := r.target("logout-job")

	// Two users: the agent stays while one of them is still in.
	long := c.Command(context.Background(), "ssh", tgt, tgt.Dest(), "echo in; read line; echo bye")
	stdin, err := long.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	longOut := &syncBuffer{}
	long.Stdout, long.Stderr = longOut, longOut
	background(t, long)
	waitFor(t, "the first user to log in", func() bool { return strings.Contains(longOut.String(), "in") })
	c.SSH(tgt, 0, "true") // the second user comes and goes
	res := c.SSH(tgt, 0, "echo still-here")
	if !strings.Contains(res.Stdout, "still-here") {
		t.Fatalf("the agent left while a user was still logged in: %q", res.Stdout)
	}
	io.WriteString(stdin, "done\n")
	long.Wait()
	if code := p.exit(); code != 0 {
		t.Fatalf("exit status %d after the last logout, want 0", code)
	}
	if st := agentState(t, p.Dir); st["reason"] != "the last user logged out" || st["logins"] != float64(3) {
		t.Errorf("state file %v: want 3 logins, ended by the last logout", st)
	}
}

// TestLifetimeShellWarningsAndExpiry: the banner explains the lifetime,
// input extends the session, warnings appear in the shell before the
// expiry, and at the expiry the session closes with a message.
func TestLifetimeShellWarningsAndExpiry(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	p := startAgentProc(t, r, "expiry-job", c, "--connect-timeout", "30s", "--expiry", "3s", "--warn-before", "1500ms")
	tm := startTerm(t, c, r.target("expiry-job"), 120, 40)
	tm.waitScreen("[converge] This CI job stays up while you use it")
	tm.waitScreen(`touch "$agentdir/.hold"`)

	// Type for longer than the expiry: each keystroke moves the deadline.
	for end := time.Now().Add(4500 * time.Millisecond); time.Now().Before(end); {
		tm.typeLine("echo tick")
		time.Sleep(250 * time.Millisecond)
	}
	tm.typeLine("echo alive-$((40+2))")
	tm.waitScreen("alive-42")

	// Then stop typing.
	tm.waitScreen("[converge] This session expires in")
	tm.waitScreen("Type anything to extend it by 3s")
	tm.waitScreen("[converge] no input for 3s and no .hold: the session expired; closing.")
	// ssh exits by itself once the agent closed the shell: cleanly, with
	// status 0. (Rarely tmux reports a dead pane without a status; then
	// only the exit itself is checked.)
	var pane string
	waitFor(t, "ssh to exit", func() bool {
		pane = strings.TrimSpace(tm.tmux("display-message", "-p", "-t", "t", "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}"))
		return strings.HasPrefix(pane, "1:")
	})
	for end := time.Now().Add(2 * time.Second); strings.HasPrefix(pane, "1::") && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond) // tmux may see the pty close before the exit status
		pane = strings.TrimSpace(tm.tmux("display-message", "-p", "-t", "t", "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}"))
	}
	if f := strings.Split(pane, ":"); f[1] != "" && f[1] != "0" {
		t.Errorf("ssh exit status %s after the expiry, want 0 (a clean close)", f[1])
	} else if f[1] == "" {
		t.Logf("tmux gave no exit status for ssh (pane %q)", pane)
	}
	if code := p.exit(); code != 0 {
		t.Errorf("agent exit status %d after the expiry, want 0", code)
	}
}

// TestLifetimeHold: .hold extends a session nobody types in, and keeps
// the agent up after the last logout until it runs out.
func TestLifetimeHold(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	p := startAgentProc(t, r, "hold-job", c, "--connect-timeout", "30s", "--expiry", "1s")
	tgt := r.target("hold-job")

	// Without the hold this command, which reads no input, would be cut
	// after 1s.
	res := c.SSH(tgt, 0, `touch -d '+6 seconds' "$agentdir/.hold" && sleep 2 && echo survived`)
	if !strings.Contains(res.Stdout, "survived") {
		t.Fatalf("the session did not survive under .hold: stdout %q, stderr %q", res.Stdout, res.Stderr)
	}
	// The user logged out, but .hold holds the agent.
	res = c.SSH(tgt, 0, `rm "$agentdir/.hold" && echo released`)
	if !strings.Contains(res.Stdout, "released") {
		t.Fatalf("the held agent did not take a second login: stdout %q, stderr %q", res.Stdout, res.Stderr)
	}
	if code := p.exit(); code != 0 {
		t.Fatalf("exit status %d after the hold was released and the user left, want 0", code)
	}
}

// TestLifetimeSignal: with --stay the agent outlives a logout; SIGTERM
// then tells the connected user and ends the agent with status 0.
func TestLifetimeSignal(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	p := startAgentProc(t, r, "signal-job", c, "--connect-timeout", "30s", "--stay")
	tgt := r.target("signal-job")
	c.SSH(tgt, 0, "true")

	sess := c.Command(context.Background(), "ssh", tgt, tgt.Dest(), "echo started; sleep 60")
	out, errb := &syncBuffer{}, &syncBuffer{}
	sess.Stdout, sess.Stderr = out, errb
	background(t, sess)
	waitFor(t, "the session to start", func() bool { return strings.Contains(out.String(), "started") })
	if !p.running() {
		t.Fatal("the agent exited after a logout despite --stay")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	sess.Wait()
	if !strings.Contains(errb.String(), "[converge] the agent was stopped") {
		t.Errorf("the user was not told why the session closed; stderr %q", errb.String())
	}
}

// TestLifetimeDetachAndWait: --detach returns once the agent registered,
// the job goes on, and `agent wait` blocks only while someone is logged
// in; with nobody there it ends the agent and returns at once.
func TestLifetimeDetachAndWait(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)

	// Someone is connected: wait returns only after they leave.
	dir := detachAgent(t, r, "detach-busy", c)
	tgt := r.target("detach-busy")
	sess := c.Command(context.Background(), "ssh", tgt, tgt.Dest(), "echo in; read line; echo out")
	stdin, err := sess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	sess.Stdout, sess.Stderr = out, out
	background(t, sess)
	waitFor(t, "the user to log in", func() bool { return strings.Contains(out.String(), "in") })
	type result struct {
		out string
		err error
	}
	waited := make(chan result, 1)
	go func() { o, err := agentWait(dir); waited <- result{o, err} }()
	waitFor(t, "agent wait to see the user", func() bool { return agentState(t, dir)["waiting"] == true })
	select {
	case res := <-waited:
		t.Fatalf("agent wait returned while a user was logged in: %v\n%s", res.err, res.out)
	default:
	}
	io.WriteString(stdin, "bye\n")
	sess.Wait()
	var res result
	select {
	case res = <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("agent wait did not return after the last logout")
	}
	if res.err != nil || !strings.Contains(res.out, "the last user logged out") {
		t.Errorf("agent wait: %v\n%s", res.err, res.out)
	}

	// Nobody connected: wait ends the agent and returns at once.
	dir = detachAgent(t, r, "detach-idle", c)
	o, err := agentWait(dir)
	if err != nil || !strings.Contains(o, "nobody was connected") {
		t.Errorf("agent wait on an unused agent: %v\n%s", err, o)
	}
	if st := agentState(t, dir); st["exited"] != true || st["exit_status"] != float64(0) {
		t.Errorf("state %v: want the agent exited with 0", st)
	}

	// No agent ever ran here: wait says so.
	o, err = agentWait(t.TempDir())
	if err == nil || !strings.Contains(o, "no agent has run in") {
		t.Errorf("agent wait without an agent: %v\n%s", err, o)
	}
}

// detachAgent runs `agent --detach --id id URL` in a fresh directory
// whose .authorized_keys holds c's key, checks what it printed, makes c
// trust the host key it printed, and returns the directory. The agent
// runs on in the background until the test ends.
func detachAgent(t *testing.T, r *relay, id string, c *sshtest.Client) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin("agent"), "--detach", "--connect-timeout", "60s", "--id", id, r.URL)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("agent --detach: %v\n%s", err, out)
	}
	pid := int(agentState(t, dir)["pid"].(float64))
	t.Cleanup(func() {
		if proc, err := os.FindProcess(pid); err == nil {
			proc.Kill()
		}
	})
	for _, want := range []string{"registered", "ssh ", "agent wait"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("agent --detach printed no %q:\n%s", want, out)
		}
	}
	trustPrinted(t, c, id, string(out))
	return dir
}

// agentWait runs `agent wait` in dir and returns what it printed.
func agentWait(dir string) (string, error) {
	cmd := exec.Command(bin("agent"), "wait")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestLifetimeStatusOnSessionsPage: the agent reports its expiry and
// number of logged-in users to the server, which shows them.
func TestLifetimeStatusOnSessionsPage(t *testing.T) {
	t.Parallel()
	r := startServer(t, func(cfg *server.Config) { cfg.SessionsPassword = "pw" })
	c := sshtest.New(t)
	startAgent(t, r, "status-job", c, func(cfg *agent.Config) {
		cfg.Lifetime = lifetime.Config{ConnectTimeout: time.Hour, Expiry: 2 * time.Hour}
	})
	page := func() (users int, expiry time.Time) {
		t.Helper()
		req, _ := http.NewRequest("GET", r.HTTP+"/sessions", nil)
		req.SetBasicAuth("", "pw")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		u := regexp.MustCompile(`data-label="Users"[^>]*>(\d+)<`).FindSubmatch(b)
		e := regexp.MustCompile(`data-label="Expires"><time datetime="([^"]+)"`).FindSubmatch(b)
		if u == nil || e == nil {
			t.Fatalf("no users or expiry on the sessions page:\n%s", b)
		}
		users, _ = strconv.Atoi(string(u[1]))
		expiry, err = time.Parse(time.RFC3339, string(e[1]))
		if err != nil {
			t.Fatal(err)
		}
		return users, expiry
	}
	users, expiry := page()
	if users != 0 || time.Until(expiry) < 50*time.Minute || time.Until(expiry) > time.Hour {
		t.Errorf("before login: %d users, expiry in %v; want 0 and the connect timeout (1h)", users, time.Until(expiry))
	}
	tgt := r.target("status-job")
	sess := c.Command(context.Background(), "ssh", tgt, tgt.Dest(), "echo in; sleep 60")
	out := &syncBuffer{}
	sess.Stdout = out
	background(t, sess)
	waitFor(t, "the user to log in", func() bool { return strings.Contains(out.String(), "in") })
	waitFor(t, "the page to show 1 user and the idle expiry", func() bool {
		users, expiry := page()
		return users == 1 && time.Until(expiry) > 100*time.Minute
	})
}

// TestLifetimeCommandInput: input on a command's stdin (not only
// keystrokes in a shell) extends the session.
func TestLifetimeCommandInput(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	p := startAgentProc(t, r, "input-job", c, "--connect-timeout", "30s", "--expiry", "1s")
	tgt := r.target("input-job")
	cmd := c.Command(context.Background(), "ssh", tgt, tgt.Dest(), "cat >/dev/null && echo done")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Feed input for three times the expiry, then end it.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		io.WriteString(stdin, "still here\n")
		time.Sleep(200 * time.Millisecond)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "done") {
		t.Fatalf("a command fed input was cut: %v, output %q", err, out)
	}
	if code := p.exit(); code != 0 {
		t.Errorf("exit status %d after the last logout, want 0", code)
	}
}

// TestLifetimeMaxSession: the hard cap ends a session however busy, and
// tells the user why.
func TestLifetimeMaxSession(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	p := startAgentProc(t, r, "cap-job", c, "--connect-timeout", "30s", "--expiry", "1m", "--max-session", "1s")
	tgt := r.target("cap-job")
	res := c.Run("ssh", tgt, "", tgt.Dest(), `touch -d '+1 hour' "$agentdir/.hold"; sleep 60`)
	if res.Code == 0 || !strings.Contains(res.Stderr, "[converge] the session reached its limit of 1s (--max-session); closing.") {
		t.Errorf("ssh under --max-session: exit %d, stderr %q; want it cut with the reason", res.Code, res.Stderr)
	}
	if code := p.exit(); code != 0 {
		t.Errorf("exit status %d after --max-session, want 0", code)
	}
	if st := agentState(t, p.Dir); st["reason"] != "the session reached its --max-session limit" {
		t.Errorf("state %v: want ended by --max-session", st)
	}
}
