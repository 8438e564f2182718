package e2e

import (
	"os/exec"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestObserverTypingDoesNotExtend: the agent of --expiry 3s ends 3s
// after its owner's last keystroke although an observer attached to the
// owner's shell keeps typing: an observer's keys are no user's input.
// (TestLifetimeShellWarningsAndExpiry shows that the owner's do extend.)
func TestObserverTypingDoesNotExtend(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	owner, watcher := sshtest.New(t), sshtest.New(t)
	line, _ := observerLine(t, watcher, "watcher@desk")
	p := startAgentProc(t, r, "watch-expiry", owner, "--connect-timeout", "30s", "--expiry", "3s", "--observer-keys-data", line)
	trustPrinted(t, watcher, "watch-expiry", p.Out.String())
	tm := startTerm(t, owner, r.target("watch-expiry"), 100, 30)
	tm.typeLine("echo owner-$((6*7))")
	tm.waitScreen("owner-42")
	v := startTerm(t, watcher, r.target("watch-expiry"), 100, 30, "attach")
	v.waitScreen("owner-42")
	v.typeLine("x")
	v.waitScreen("read-only: you are an observer")

	// The observer types on, several times a second, until the agent ends.
	limit := time.Now().Add(30 * time.Second)
	for p.running() {
		if time.Now().After(limit) {
			t.Fatal("the agent outlived its 3s expiry by 30s while an observer typed")
		}
		exec.Command("tmux", "-S", v.sock, "send-keys", "-t", "t", "-l", "x").Run() // the pane may be dead by now
		time.Sleep(200 * time.Millisecond)
	}
	if code := p.exit(); code != 0 {
		t.Errorf("agent exit status %d after the expiry, want 0", code)
	}
	tm.waitScreen("the session expired")
}
