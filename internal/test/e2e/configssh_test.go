package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

var knownLineRE = regexp.MustCompile(`(?m)^\s+add to ~/.ssh/known_hosts\s+(\S+ ssh-ed25519 \S+)$`)

// TestConfigSSH: `wsproxy config-ssh` writes one block into an SSH
// config that has other lines, keeps them byte for byte, changes nothing
// when run again, and a real `ssh myjob.HOST true` logs in through it,
// checking the agent's key with the known_hosts line the agent printed.
// The usage page shows the command.
func TestConfigSSH(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "myjob", c)
	m := knownLineRE.FindStringSubmatch(a.Out.String())
	if m == nil {
		t.Fatalf("the agent printed no known_hosts line for config-ssh:\n%s", a.Out.String())
	}
	known := filepath.Join(c.Home, "agent_known_hosts")
	if err := os.WriteFile(known, []byte(m[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a.Out.String(), "wsproxy config-ssh --server "+r.URL+" --user "+r.User) || !strings.HasPrefix(m[1], "myjob.127.0.0.1 ") {
		t.Errorf("the agent's connect lines do not mention config-ssh:\n%s", a.Out.String())
	}

	config := filepath.Join(c.Home, "config")
	before := "Host other\n\tUser nobody\r\n# a comment without a newline"
	if err := os.WriteFile(config, []byte(before), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		out, err := exec.Command(bin("wsproxy"), "config-ssh", "--server", r.URL, "--user", r.User, "--config", config).CombinedOutput()
		if err != nil {
			t.Fatalf("wsproxy config-ssh: %v\n%s", err, out)
		}
		return string(out)
	}
	run()
	once, _ := os.ReadFile(config)
	if !strings.HasPrefix(string(once), before+"\n") {
		t.Errorf("the config's other lines changed:\n%q", once)
	}
	if out := run(); !strings.Contains(out, "already up to date") {
		t.Errorf("second run says %q", out)
	}
	if twice, _ := os.ReadFile(config); string(twice) != string(once) {
		t.Errorf("second run changed the config:\n%q\nthen\n%q", once, twice)
	}
	printed, err := exec.Command(bin("wsproxy"), "config-ssh", "--server", r.URL, "--user", r.User, "--print").Output()
	if err != nil || !strings.Contains(string(once), string(printed)) {
		t.Errorf("--print gave %q (%v), not the block written", printed, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ssh := exec.CommandContext(ctx, "ssh", "-F", config, "-i", c.KeyFile, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+known,
		"-o", "GlobalKnownHostsFile=/dev/null", "myjob.127.0.0.1", "echo in-$((20+22))")
	ssh.Env = append(os.Environ(), "HOME="+c.Home)
	ssh.WaitDelay = 5 * time.Second
	out, err := ssh.CombinedOutput()
	if err != nil && ssh.ProcessState.ExitCode() != 0 || !strings.Contains(string(out), "in-42") {
		t.Errorf("ssh myjob.127.0.0.1 through the config: %v\n%s", err, out)
	}

	p := newTermPage(t)
	p.open(r.HTTP + "/?id=myjob")
	if got := text(t, p.ctx, "#config-ssh"); !strings.Contains(got, "wsproxy config-ssh --server "+r.URL) || !strings.Contains(got, "ssh myjob.127.0.0.1") {
		t.Errorf("usage page's config-ssh recipe: %q", got)
	}
}
