package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// togetherRig is an agent reached through a capturing proxy in front of
// the relay: what the relay's side of the path carries.
type togetherRig struct {
	r   *relay
	a   *runningAgent
	cap *captureProxy
	tgt sshtest.Target
}

func newTogetherRig(t *testing.T, id string, owner *sshtest.Client, mods ...func(*agent.Config)) *togetherRig {
	t.Helper()
	r := startServer(t)
	a := startAgent(t, r, id, owner, append([]func(*agent.Config){func(cfg *agent.Config) { cfg.Shell = "bash" }}, mods...)...)
	cp := startCapture(t, r.Addr)
	tgt := sshtest.Target{User: r.User, Alias: id, ProxyCommand: bin("wsproxy") + " ws://" + cp.Addr() + "/client/" + id}
	return &togetherRig{r: r, a: a, cap: cp, tgt: tgt}
}

// TestKeptShellOutlivesItsClient: the owner's ssh dies in the middle of
// a command; the command finishes; `ssh ID ls` lists the shell with
// nobody attached; `ssh -t ID attach` shows the output from before and
// after the drop, and the shell's exit status ends the attached ssh.
// Nothing typed or shown crosses the relay's side in clear.
func TestKeptShellOutlivesItsClient(t *testing.T) {
	t.Parallel()
	owner := sshtest.New(t)
	rig := newTogetherRig(t, "kept-job", owner)
	tm := startTerm(t, owner, rig.tgt, 100, 30)
	tm.typeLine(`echo typed-before-$((6*7)); until [ -e go-on ]; do sleep 0.05; done; echo finished-$((40+2))`)
	tm.waitScreen("typed-before-42")
	tm.tmux("kill-server") // the owner's ssh dies with its terminal

	waitFor(t, "ls to show the shell with nobody attached", func() bool {
		res := owner.SSH(rig.tgt, 0, "ls")
		return strings.Contains(res.Stdout, "NAME") && strings.Contains(res.Stdout, "nobody")
	})
	if err := os.WriteFile(filepath.Join(rig.a.Dir, "go-on"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	back := startTerm(t, owner, rig.tgt, 90, 25, "attach")
	back.waitScreen("finished-42")
	if screen := back.screen(); !strings.Contains(screen, "typed-before-42") {
		t.Errorf("the attached screen lacks the output from before the drop:\n%s", screen)
	}
	back.typeLine(`echo "SIZE=$(stty size)"`)
	back.waitScreen("SIZE=25 90") // the window follows the writer
	back.typeLine("exit 5")
	if got := back.exitStatus(); got != 5 {
		t.Errorf("attached ssh exit status %d, want the shell's 5", got)
	}
	res := owner.SSH(rig.tgt, 1, "attach")
	if !strings.Contains(res.Stderr, "no shell is running") {
		t.Errorf("attach with no shell: stderr %q, want a clear message", res.Stderr)
	}
	rig.checkRelay(t, "typed-before", "finished-42", "go-on")
}

// observerLine is c's public key as an authorized_keys line with comment
// name, and the key's fingerprint.
func observerLine(t *testing.T, c *sshtest.Client, name string) (line, fp string) {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " " + name, ssh.FingerprintSHA256(k)
}

// TestObserversWatchReadOnly: the owner and three OpenSSH observers on
// one shell. Observers see the owner's output, the scroll-back first;
// 1,000 keystrokes of an observer put nothing into the shell (the agent
// counts them) and get one line saying read-only; join and leave lines
// name each key's comment and fingerprint; observers cannot run a
// command, a shell of their own or SFTP. The relay's side of the path
// carries none of it in clear.
func TestObserversWatchReadOnly(t *testing.T) {
	t.Parallel()
	owner := sshtest.New(t)
	names := []string{"alice@laptop", "bob@desk", "carol@train"}
	var obs []*sshtest.Client
	var lines, fps []string
	for _, n := range names {
		c := sshtest.New(t)
		line, fp := observerLine(t, c, n)
		obs, lines, fps = append(obs, c), append(lines, line), append(fps, fp)
	}
	rig := newTogetherRig(t, "watch-job", owner, func(cfg *agent.Config) {
		cfg.ObserverKeys = strings.Join(lines, "\n")
	})
	for _, c := range obs {
		c.Trust("watch-job", rig.a.HostKey())
	}
	tm := startTerm(t, owner, rig.tgt, 100, 30)
	tm.typeLine(`echo scrollback-$((1+1))`)
	tm.waitScreen("scrollback-2")

	var views []*term
	for i, c := range obs {
		v := startTerm(t, c, rig.tgt, 80, 24, "attach")
		v.waitScreen("scrollback-2")
		tm.waitScreen(names[i] + " (" + fps[i] + ") joined shell 1, read-only")
		views = append(views, v)
	}
	tm.typeLine(`echo live-$((3*3))`)
	for _, v := range views {
		v.waitScreen("live-9")
	}

	views[0].tmux("send-keys", "-t", "t", "-l", strings.Repeat("x", 1000))
	views[0].waitScreen("read-only: you are an observer")
	waitFor(t, "the agent to count 1000 refused keystrokes", func() bool {
		s := rig.a.Shells()
		return len(s) == 1 && s[0].Refused == 1000
	})
	tm.typeLine(`echo "probe-$((5+5))"`)
	tm.waitScreen("probe-10")
	if screen := tm.screen(); strings.Contains(screen, "xxx") {
		t.Errorf("an observer's keystrokes reached the shell:\n%s", screen)
	}
	if s := rig.a.Shells(); len(s[0].Attached) != 4 {
		t.Errorf("attached: %q, want the owner and three observers", s[0].Attached)
	}

	for _, cmd := range []string{"echo not-allowed", ""} {
		args := []string{rig.tgt.Dest()}
		if cmd != "" {
			args = append(args, cmd)
		}
		res := obs[1].Run("ssh", rig.tgt, "", args...)
		if res.Code == 0 || !strings.Contains(res.Stderr, "observer key") || strings.Contains(res.Stdout, "not-allowed") {
			t.Errorf("observer ssh %q: exit %d, stdout %q, stderr %q; want a refusal naming the observer key", cmd, res.Code, res.Stdout, res.Stderr)
		}
	}
	if res := obs[1].Run("sftp", rig.tgt, "ls\n", "-b", "-", rig.tgt.Dest()); res.Code == 0 {
		t.Errorf("observer sftp: exit 0, want a refusal; stdout %q", res.Stdout)
	}

	views[1].tmux("kill-server")
	tm.waitScreen(names[1] + " (" + fps[1] + ") left")
	tm.typeLine("exit 0")
	for _, v := range []*term{views[0], views[2]} {
		if got := v.exitStatus(); got != 0 {
			t.Errorf("observer's ssh exit status %d after the shell ended, want 0", got)
		}
	}
	rig.checkRelay(t, "scrollback-", "live-", "probe-", "xxxxxxxx")
}

// visible is what the terminal shows now, without its history.
func (tm *term) visible() string { return tm.tmux("capture-pane", "-p", "-t", "t") }

// TestKeptShellRedrawsVim: vim open when the owner's ssh dies is drawn
// again on the screen of whoever attaches: an observer the size of the
// writer's window, and the owner back with a smaller window (which the
// terminal then follows).
func TestKeptShellRedrawsVim(t *testing.T) {
	t.Parallel()
	owner, watcher := sshtest.New(t), sshtest.New(t)
	line, _ := observerLine(t, watcher, "watcher@test")
	rig := newTogetherRig(t, "vim-job", owner, func(cfg *agent.Config) { cfg.ObserverKeys = line })
	watcher.Trust("vim-job", rig.a.HostKey())
	var text strings.Builder
	for i := range 10 {
		fmt.Fprintf(&text, "vim-text-%d\n", i)
	}
	if err := os.WriteFile(filepath.Join(rig.a.Dir, "notes.txt"), []byte(text.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	tm := startTerm(t, owner, rig.tgt, 100, 30)
	tm.typeLine("clear; vim -u NONE -N -i NONE notes.txt")
	tm.waitScreen(`"notes.txt" 10L`)
	tm.tmux("kill-server")
	waitFor(t, "the owner's client to be gone", func() bool {
		s := rig.a.Shells()
		return len(s) == 1 && len(s[0].Attached) == 0
	})

	for _, v := range []struct {
		who        *sshtest.Client
		cols, rows int
	}{{watcher, 100, 30}, {owner, 90, 25}} {
		start := time.Now()
		back := startTerm(t, v.who, rig.tgt, v.cols, v.rows, "attach")
		waitFor(t, "vim on the attached screen", func() bool {
			s := back.visible()
			return strings.Contains(s, "vim-text-0") && strings.Contains(s, "vim-text-9") && strings.Contains(s, "\n~")
		})
		t.Logf("%dx%d: vim on the screen %v after ssh started", v.cols, v.rows, time.Since(start).Round(time.Millisecond))
		if v.who == owner {
			back.typeLine(":q!")
			// vim drops typeahead as it leaves (TCSAFLUSH): wait for the shell.
			waitFor(t, "vim to quit", func() bool { return !strings.Contains(back.visible(), "vim-text-0") })
			back.typeLine(`echo "SIZE=$(stty size)"`)
			back.waitScreen("SIZE=25 90")
			back.typeLine("exit")
			if got := back.exitStatus(); got != 0 {
				t.Errorf("ssh exit status %d, want 0", got)
			}
		} else {
			back.typeLine("~d") // Enter, ~, d: detach
			back.waitScreen("detached from shell 1")
			if got := back.exitStatus(); got != 0 {
				t.Errorf("observer's ssh exit status %d after detaching, want 0", got)
			}
		}
	}
	rig.checkRelay(t, "vim-text-")
}

// checkRelay fails the test when any of marks appears in clear in what
// the capturing proxy carried, either way, raw or unmasked. Each
// connection must show the SSH banners, the only clear text of SSH,
// which proves the capture saw its bytes.
func (rig *togetherRig) checkRelay(t *testing.T, marks ...string) {
	t.Helper()
	rig.cap.close()
	p := rig.cap
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, c := range p.conns {
		up, down := c.up.Bytes(), c.down.Bytes()
		relayed := clientPayloads(up)
		for _, mark := range marks {
			for _, b := range [][]byte{up, down, relayed} {
				if bytes.Contains(b, []byte(mark)) {
					t.Errorf("connection %d through the relay carries %q in clear", i, mark)
				}
			}
		}
		// wsproxy's raw legs carry the stream unframed; WebSocket legs
		// are unmasked first.
		seen := bytes.Contains(up, []byte("SSH-2.0-")) || bytes.Contains(relayed, []byte("SSH-2.0-"))
		if !seen || !bytes.Contains(down, []byte("SSH-2.0-")) {
			t.Errorf("connection %d: the capture lacks the SSH banners (up %d bytes, down %d): it saw nothing of the session", i, len(up), len(down))
		}
	}
}

// TestKeptShellsInTheBinary: the agent binary with --observer-keys FILE;
// a shell its owner left is listed by `converge ls` inside the job and
// counted by `converge status`; an observer may list shells, not run the
// converge command.
func TestKeptShellsInTheBinary(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	owner, watcher := sshtest.New(t), sshtest.New(t)
	dir := keyDir(t, owner)
	obsFile := filepath.Join(t.TempDir(), "observers")
	if err := os.WriteFile(obsFile, []byte(withComment(watcher, "watcher@desk")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := runAgentBinary(t, r, dir, []string{"HOME=" + t.TempDir()}, "--id", "bin-kept", "--stay", "--shell", "bash",
		"--state-dir", t.TempDir(), "--observer-keys", obsFile)
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, owner, line)
	addKnownHost(t, watcher, line)
	tgt := r.target("bin-kept")

	tm := startTerm(t, owner, tgt, 80, 24)
	tm.typeLine("echo started-$((2+3))")
	tm.waitScreen("started-5")
	tm.tmux("kill-server")
	waitFor(t, "converge ls to list the shell with nobody attached", func() bool {
		res := owner.SSH(tgt, 0, "converge ls; converge status")
		return strings.Contains(res.Stdout, "nobody") && strings.Contains(res.Stdout, "Shells kept running: 1")
	})
	if res := watcher.SSH(tgt, 0, "ls"); !strings.Contains(res.Stdout, "nobody") {
		t.Errorf("observer's ssh ID ls:\n%s%s", res.Stdout, res.Stderr)
	}
	if res := watcher.Run("ssh", tgt, "", tgt.Dest(), "converge ls"); res.Code == 0 || !strings.Contains(res.Stderr, "observer key") {
		t.Errorf("observer's converge ls: exit %d, stderr %q; want a refusal", res.Code, res.Stderr)
	}
}

// TestSharedShellSurvivesRelayRestart: the owner and an observer on one
// shell while the relay is killed and started again: both see every line
// a running loop prints, and the observer is still attached after.
func TestSharedShellSurvivesRelayRestart(t *testing.T) {
	watcher := sshtest.New(t)
	line, _ := observerLine(t, watcher, "watcher@desk")
	rig := newResumeRig(t, "phoenix-shared", func(cfg *agent.Config) { cfg.Shell = "bash"; cfg.ObserverKeys = line })
	watcher.Trust("phoenix-shared", rig.agent.HostKey())
	tm := startTerm(t, rig.c, rig.tgt, 100, 30)
	tm.typeLine("echo ready-$((1+1))")
	tm.waitScreen("ready-2")
	view := startTerm(t, watcher, rig.tgt, 100, 30, "attach")
	view.waitScreen("ready-2")
	tm.typeLine("for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.4; done; echo finished-$((40+2))")
	view.waitScreen("tick-2")
	rig.restartServer()
	for _, v := range []*term{tm, view} {
		v.waitScreen("finished-42")
		screen := v.screen()
		for i := 1; i <= 8; i++ {
			if !strings.Contains(screen, fmt.Sprintf("tick-%d\n", i)) {
				t.Errorf("tick-%d is missing after the restart:\n%s", i, screen)
			}
		}
	}
	if s := rig.agent.Shells(); len(s) != 1 || len(s[0].Attached) != 2 {
		t.Errorf("after the restart: shells %+v, want one with the owner and the observer attached", s)
	}
}

// TestBrowserObserver: the browser terminal, opened with #…&attach and
// logged in with a key listed as an observer's, joins the owner's shell
// read-only: it shows the screen and what the owner types next, and what
// it types does not reach the shell. The bytes between the browser and
// the relay carry none of it in clear.
func TestBrowserObserver(t *testing.T) {
	t.Parallel()
	r := startServer(t, withTerminal)
	owner := sshtest.New(t)
	obsFile := filepath.Join(t.TempDir(), "observers")
	if err := os.WriteFile(obsFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, r, "browser-watch", owner, func(cfg *agent.Config) {
		cfg.Shell, cfg.ObserverKeysFiles, cfg.Executable = "bash", []string{obsFile}, bin("agent")
	})
	tm := startTerm(t, owner, r.target("browser-watch"), 100, 30)
	tm.typeLine("echo before-$((2*21))")
	tm.waitScreen("before-42")

	capture := startCapture(t, r.Addr) // the browser's side of the relay
	p := newTermPage(t)
	p.open(browserLink(t, a, r, "browser-watch", "http://"+capture.Addr()) + "&attach")
	if st := p.waitState("login", "open"); st != "login" {
		t.Fatalf("page is %q before its key was listed; want login", st)
	}
	line := strings.TrimSpace(p.text("#browser-key"))
	if err := os.WriteFile(obsFile, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	do(t, p.ctx, "connect", chromedp.Click(chromedp.CSS("#connect")))
	p.waitState("open")
	p.waitScreen("before-42")
	tm.waitScreen("joined shell 1, read-only")
	tm.typeLine("echo after-$((2*50))")
	p.waitScreen("after-100")
	p.typeLine("echo typed-in-the-browser")
	p.waitScreen("read-only: you are an observer")
	tm.typeLine("echo probe-$((3+4))")
	tm.waitScreen("probe-7")
	if strings.Contains(tm.screen(), "typed-in-the-browser") {
		t.Errorf("the browser observer's keystrokes reached the shell:\n%s", tm.screen())
	}
	capture.close()
	for _, mark := range []string{"before-", "after-", "typed-in-the-browser", "read-only: you"} {
		capture.check(t, mark)
	}
}
