//go:build unix

package deploytest

import (
	"strings"
	"syscall"
	"testing"
)

// TestActionPostAfterCancel: a job cancelled while the main step follows
// the agent kills the step's processes, not the agent, which runs in the
// background; the post step, which runs always, then ends it.
func TestActionPostAfterCancel(t *testing.T) {
	u := newUser(t)
	r := startServer(t, agentDist(t))
	j := newJob(t, keysServer(t, map[string]string{"octocat": u.PublicKey}))
	inputs := map[string]string{"server": r.HTTP, "id": "cancelled-job"}
	cmd := j.step("main", inputs)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	main := start(t, cmd)
	waitFor(t, "the summary", func() bool {
		if main.exited() {
			t.Fatalf("the main step ended before anyone connected: %v\n%s", main.err, main.out)
		}
		return strings.Contains(j.summary(), "ssh -oProxyCommand")
	})
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the runner's cancel, to the step's process group
	main.wait(t)
	if st := j.agentState(); st["exited"] == true {
		t.Fatalf("the agent ended with the main step: %v", st)
	}
	out := j.run("post", inputs)
	if !strings.Contains(out, "nobody was connected") {
		t.Errorf("post step after a cancelled main step:\n%s", out)
	}
	if st := j.agentState(); st["exited"] != true {
		t.Errorf("the agent still runs after the post step: %v", st)
	}
}
