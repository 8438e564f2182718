package sshd

import (
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const hangupHelperEnv = "CONVERGE_TEST_HANGUP_HELPER"

// TestSessionsStartWithHangupAtDefault: an agent started under nohup (SIGHUP
// ignored) still starts its sessions' processes with SIGHUP at its
// default, so that they end with their session. Runs this test binary
// under the real nohup, as a CI runner might start the agent.
func TestSessionsStartWithHangupAtDefault(t *testing.T) {
	nohup, err := exec.LookPath("nohup")
	if err != nil {
		t.Skip("no nohup here")
	}
	cmd := exec.Command(nohup, os.Args[0], "-test.run=^TestHangupHelper$", "-test.v")
	cmd.Env = append(os.Environ(), hangupHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHangupHelper") {
		t.Fatalf("under nohup: %v\n%s", err, out)
	}
}

// TestHangupHelper runs only under TestSessionsStartWithHangupAtDefault.
func TestHangupHelper(t *testing.T) {
	if os.Getenv(hangupHelperEnv) == "" {
		t.Skip("run by TestSessionsStartWithHangupAtDefault")
	}
	if !signal.Ignored(syscall.SIGHUP) {
		t.Fatal("nohup did not leave SIGHUP ignored")
	}
	if !childIgnoresHangup(t) {
		t.Fatal("a child does not inherit the ignored SIGHUP: the test proves nothing")
	}
	hangupAtDefault()
	if childIgnoresHangup(t) {
		t.Fatal("after hangupAtDefault, a child still ignores SIGHUP")
	}
}

// childIgnoresHangup starts a child and reports whether SIGHUP is in its
// ignored mask.
func childIgnoresHangup(t *testing.T) bool {
	out, err := exec.Command("cat", "/proc/self/status").Output()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<(syscall.SIGHUP-1)) != 0
		}
	}
	t.Fatal("no SigIgn line")
	return false
}
