package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// term is an interactive `ssh -tt` running in a detached tmux session, so
// a test can type into it, read its screen and resize it as a user would.
type term struct {
	t      *testing.T
	sock   string
	status string // file where ssh's exit status is written
}

// startTerm runs c's ssh to tgt in a cols×rows terminal, with the
// remote command args if any.
func startTerm(t *testing.T, c *sshtest.Client, tgt sshtest.Target, cols, rows int, args ...string) *term {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux not found: install tmux (the PTY tests drive ssh through it)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "tmux.conf")
	if err := os.WriteFile(conf, []byte("set -g remain-on-exit on\nset -g status off\nset -g history-limit 5000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tm := &term{t: t, sock: filepath.Join(dir, "tmux.sock"), status: filepath.Join(dir, "ssh-status")}
	ssh := c.Command(context.Background(), "ssh", tgt, append([]string{"-tt", tgt.Dest()}, args...)...)
	// sh records ssh's own exit status: tmux calls a pane dead only when
	// every holder of its terminal is gone, ssh's ProxyCommand included.
	targs := []string{"-f", conf, "new-session", "-d", "-s", "t", "-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows), "--",
		"sh", "-c", `"$@"; echo $? >"$0.tmp" && mv "$0.tmp" "$0"`, tm.status, "env", "HOME=" + c.Home}
	tm.tmux(append(targs, ssh.Args...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("terminal screen:\n%s", tm.screen())
		}
		exec.Command("tmux", "-S", tm.sock, "kill-server").Run()
	})
	return tm
}

func (tm *term) tmux(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.sock}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// typeLine types s and Enter.
func (tm *term) typeLine(s string) {
	tm.t.Helper()
	tm.tmux("send-keys", "-t", "t", "-l", s)
	tm.tmux("send-keys", "-t", "t", "Enter")
}

// key sends one key by its tmux name, such as C-c.
func (tm *term) key(k string) { tm.t.Helper(); tm.tmux("send-keys", "-t", "t", k) }

// screen is the terminal's content, history included, lines joined.
func (tm *term) screen() string {
	out, _ := exec.Command("tmux", "-S", tm.sock, "capture-pane", "-p", "-J", "-S", "-", "-t", "t").CombinedOutput()
	return string(out)
}

// waitScreen waits until the screen shows want.
func (tm *term) waitScreen(want string) {
	tm.t.Helper()
	waitFor(tm.t, fmt.Sprintf("%q on the screen", want), func() bool { return strings.Contains(tm.screen(), want) })
}

// exitStatus waits for ssh to exit and returns its status.
func (tm *term) exitStatus() int {
	tm.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(tm.status)
		if err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				tm.t.Fatalf("ssh exit status %q: %v", b, err)
			}
			return n
		}
		if time.Now().After(deadline) {
			ps, _ := exec.Command("ps", "-eo", "pid,ppid,pgid,sid,stat,wchan:20,args", "--forest").CombinedOutput()
			tm.t.Fatalf("timed out waiting for ssh to exit; processes:\n%s", ps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processes returns the PIDs whose command line is exactly argv.
func processes(argv ...string) []int {
	want := strings.Join(argv, "\x00") + "\x00"
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && string(b) == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// markerSleep is a sleep command line no other process has.
func markerSleep() string { return strconv.Itoa(900000 + rand.IntN(99999)) }

// TestPTYShell drives an interactive login shell through a real terminal:
// size and resize, environment, Ctrl-C, Ctrl-Z, exit status, and no
// process left after logout.
func TestPTYShell(t *testing.T) {
	t.Setenv("CONVERGE_E2E_CI_VAR", "from-the-ci-job")
	r := startServer(t)
	c := sshtest.New(t)
	// bash, whatever $SHELL the CI has: the test uses its job control.
	a := startAgent(t, r, "pty-job", c, func(cfg *agent.Config) { cfg.Shell = "bash" })
	tm := startTerm(t, c, r.target("pty-job"), 100, 30)
	termName := strings.TrimSpace(tm.tmux("show-options", "-gv", "default-terminal"))

	tm.typeLine(`echo "SIZE=$(stty size) DIR=$(pwd) AD=$agentdir CI=$CONVERGE_E2E_CI_VAR T=$TERM"`)
	tm.waitScreen(fmt.Sprintf("SIZE=30 100 DIR=%s AD=%s CI=from-the-ci-job T=%s", a.Dir, a.Dir, termName))

	// The remote terminal follows the client's.
	tm.tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
	tm.typeLine(`echo "SIZE=$(stty size)"`)
	tm.waitScreen("SIZE=40 120")

	// Ctrl-C interrupts the foreground command, not the shell.
	n := markerSleep()
	tm.typeLine("sleep " + n)
	waitFor(t, "sleep to start", func() bool { return len(processes("sleep", n)) == 1 })
	tm.key("C-c")
	tm.typeLine("echo INTERRUPTED=$?")
	tm.waitScreen("INTERRUPTED=130")

	// Ctrl-Z stops it and job control knows.
	n = markerSleep()
	tm.typeLine("sleep " + n)
	waitFor(t, "sleep to start", func() bool { return len(processes("sleep", n)) == 1 })
	tm.key("C-z")
	tm.typeLine(`echo "STOPPED=$(jobs -s | wc -l)"`)
	tm.waitScreen("STOPPED=1")
	tm.typeLine("kill -KILL %1")

	// A background job does not outlive the logout.
	n = markerSleep()
	tm.typeLine("sleep " + n + " &")
	waitFor(t, "background sleep to start", func() bool { return len(processes("sleep", n)) == 1 })
	tm.typeLine("exit 3")
	if got := tm.exitStatus(); got != 3 {
		t.Errorf("ssh exit status %d, want 3", got)
	}
	waitFor(t, "background job to end with the session", func() bool { return len(processes("sleep", n)) == 0 })
}

// TestExecWithPTY: ssh -tt with a command gets a terminal, TERM and the
// command's exit status.
func TestExecWithPTY(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "ttyexec-job", c)
	tgt := r.target("ttyexec-job")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "ssh", tgt, "-tt", tgt.Dest(), `echo "T=$TERM"; tty; exit 3`)
	cmd.Env = append(cmd.Env, "TERM=xterm-converge-test")
	out, err := cmd.Output()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 {
		t.Fatalf("ssh -tt: %v, want exit status 3; output %q", err, out)
	}
	if !strings.Contains(string(out), "T=xterm-converge-test") || !strings.Contains(string(out), "/dev/pts/") {
		t.Errorf("output %q: want T=xterm-converge-test and a /dev/pts terminal", out)
	}
	// The lifetime banner is for login shells: a command's output is its own.
	if strings.Contains(string(out), "[converge]") {
		t.Errorf("output %q: the banner got into a command's output", out)
	}
}

// TestExecSignalAndLeftovers: a command killed by a signal reports
// 128+signal, as shells do; background children of a command end with it.
func TestExecSignalAndLeftovers(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "sig-job", c)
	tgt := r.target("sig-job")
	c.SSH(tgt, 128+15, "kill -TERM $$")

	// One child holds stdout, one does not; neither keeps the session
	// open or survives it.
	held, detached := markerSleep(), markerSleep()
	res := c.SSH(tgt, 0, "sleep "+held+" & sleep "+detached+" >/dev/null 2>&1 & echo started")
	if strings.TrimSpace(res.Stdout) != "started" {
		t.Errorf("stdout %q, want started", res.Stdout)
	}
	waitFor(t, "background children to end", func() bool {
		return len(processes("sleep", held))+len(processes("sleep", detached)) == 0
	})

	// nohup asks to outlive the session, as with sshd. The session has
	// ended by the time ssh returns.
	kept := markerSleep()
	// (The command waits until nohup has exec'd sleep: a child that has
	// not yet set SIGHUP to ignored is ended, as under sshd.)
	c.SSH(tgt, 0, "nohup sleep "+kept+` >/dev/null 2>&1 & until [ "$(cat /proc/$!/comm)" = sleep ]; do :; done`)
	pids := processes("sleep", kept)
	for _, pid := range pids {
		t.Cleanup(func() {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		})
	}
	if len(pids) != 1 {
		t.Errorf("nohup sleep: %d processes after logout, want it kept running", len(pids))
	}
}
