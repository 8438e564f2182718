package deploytest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// user is someone on a laptop who runs the commands a CI job printed:
// the real ssh with a key of their own, wsproxy on the PATH, and host keys
// checked against ~/.ssh/known_hosts.
type user struct {
	*sshtest.Client
	t *testing.T
}

func newUser(t *testing.T) *user {
	c := sshtest.New(t)
	if err := os.MkdirAll(filepath.Join(c.Home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	return &user{Client: c, t: t}
}

// env is the user's environment: their HOME, and wsproxy on the PATH.
func (u *user) env() []string {
	return append(os.Environ(), "HOME="+u.Home, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// shell runs a command line as the user would paste it into bash.
func (u *user) shell(line string) {
	u.t.Helper()
	cmd := exec.Command("bash", "-c", line)
	cmd.Env = u.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		u.t.Fatalf("%s: %v\n%s", line, err, out)
	}
}

// trust adds a known_hosts line to ~/.ssh/known_hosts.
func (u *user) trust(line string) {
	u.t.Helper()
	f, err := os.OpenFile(filepath.Join(u.Home, ".ssh", "known_hosts"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		u.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		u.t.Fatal(err)
	}
}

// ssh returns the printed ssh command line (`ssh -oProxyCommand=... ID
// user@localhost`), run by bash as pasted, with the user's key and strict
// host key checking added and remote as the command to run.
func (u *user) ssh(ctx context.Context, line, remote string) *exec.Cmd {
	u.t.Helper()
	rest, ok := strings.CutPrefix(line, "ssh ")
	if !ok {
		u.t.Fatalf("not an ssh command: %q", line)
	}
	opts := []string{
		"-F", "none", "-i", u.KeyFile,
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + filepath.Join(u.Home, ".ssh", "known_hosts"),
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
	}
	for i, o := range opts {
		opts[i] = "'" + o + "'"
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", "ssh "+strings.Join(opts, " ")+" "+rest+` "$1"`, "bash", remote)
	cmd.Env = u.env()
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs the printed ssh command line with remote and returns its output.
func (u *user) run(line, remote string) string {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := u.ssh(ctx, line, remote).CombinedOutput()
	if err != nil && !errorsIsWaitDelay(err) {
		u.t.Fatalf("%s %q: %v\n%s", line, remote, err, out)
	}
	return string(out)
}

// errorsIsWaitDelay: ssh exited 0 but wsproxy, its ProxyCommand, still
// held its stderr for a moment while ending a resumable stream.
func errorsIsWaitDelay(err error) bool { return errors.Is(err, exec.ErrWaitDelay) }

// session is a login that stays until end is called: the remote command
// prints "in" and the directory, then reads its standard input.
type session struct {
	p     *proc
	stdin interface{ Close() error }
}

func (u *user) hold(line string) *session {
	u.t.Helper()
	cmd := u.ssh(context.Background(), line, "echo in; pwd; cat")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		u.t.Fatal(err)
	}
	s := &session{p: start(u.t, cmd), stdin: stdin}
	waitFor(u.t, "the user to log in", func() bool {
		if s.p.exited() {
			u.t.Fatalf("ssh ended before logging in: %v\n%s", s.p.err, s.p.out)
		}
		return strings.Contains(s.p.out.String(), "in\n")
	})
	return s
}

// end logs out and waits for ssh to exit.
func (s *session) end(t *testing.T) {
	t.Helper()
	s.stdin.Close()
	if err := s.p.wait(t); err != nil && !errorsIsWaitDelay(err) {
		t.Errorf("ssh: %v\n%s", err, s.p.out)
	}
}
