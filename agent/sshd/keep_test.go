//go:build !windows

package sshd

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
	gossh "golang.org/x/crypto/ssh"
)

// TestKeptShellThatEndsAtOnce: a shell that exits before anyone could
// attach ends its session with its status, and is not left listed.
func TestKeptShellThatEndsAtOnce(t *testing.T) {
	t.Parallel()
	signer, line := sshtest.NewKey(t, "owner")
	d, addr := serveDirect(t, Config{AuthorizedKeys: line, Shell: "false"})
	c, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{User: "u", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(d.HostKey())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 5 {
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Shell(); err != nil {
			t.Fatal(err)
		}
		var exit *gossh.ExitError
		if err := s.Wait(); !errors.As(err, &exit) || exit.ExitStatus() != 1 {
			t.Errorf("shell `false`: %v, want exit status 1", err)
		}
	}
	if sh := d.Shells(); len(sh) != 0 {
		t.Errorf("shells listed after they ended: %+v", sh)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.CombinedOutput("attach")
	if err == nil || !strings.Contains(string(out), "no shell is running") {
		t.Errorf("attach with no shell: %v, %q", err, out)
	}
}

// TestKeptShellEndsDespiteLeftovers: a shell exits while a background
// job that ignores the hangup still holds its terminal; the shell still
// ends (its output closes after killGrace) and reports its status, and
// the server's Wait does not hang on it.
func TestKeptShellEndsDespiteLeftovers(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	signer, line := sshtest.NewKey(t, "owner")
	d, addr := serveDirect(t, Config{AuthorizedKeys: line, Shell: "bash"})
	c, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{User: "u", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(d.HostKey())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	marker := "1" + strconv.Itoa(int(time.Now().UnixNano()%1e6))
	s.Stdin = strings.NewReader("trap '' HUP; sleep " + marker + " & exit 7\n")
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killExact("sleep", marker) })
	var exit *gossh.ExitError
	if err := s.Wait(); !errors.As(err, &exit) || exit.ExitStatus() != 7 {
		t.Errorf("shell: %v, want exit status 7", err)
	}
}

// killExact kills the processes whose command line is exactly argv (the
// test's own, by a unique argument).
func killExact(argv ...string) {
	want := strings.Join(argv, "\x00") + "\x00"
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && string(b) == want {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
