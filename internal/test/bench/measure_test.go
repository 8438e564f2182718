package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// session is one established SSH connection (an OpenSSH ControlMaster)
// that measured commands reuse, so that they time the transfer and not
// the key exchange. The connection setup is measured on its own.
type session struct {
	t      testing.TB
	c      *sshtest.Client
	tgt    sshtest.Target
	sock   string
	master *exec.Cmd
	server int // PID of the converge process on the path; 0 for none
}

// openSession connects to tgt with extra ssh arguments (e.g. "-c", cipher)
// and waits until the master connection is up.
func openSession(t testing.TB, c *sshtest.Client, tgt sshtest.Target, extra ...string) *session {
	t.Helper()
	dir, err := os.MkdirTemp("", "cvb") // short: unix socket paths are limited to ~100 bytes
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, c: c, tgt: tgt, sock: filepath.Join(dir, "m")}
	args := append([]string{"-M", "-S", s.sock, "-N", "-o", "ControlPersist=no"}, extra...)
	s.master = c.Command(context.Background(), "ssh", tgt, append(args, tgt.Dest())...)
	var stderr strings.Builder
	s.master.Stderr = &stderr
	if err := s.master.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.master.Wait() }()
	t.Cleanup(func() {
		s.control("exit")
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			s.master.Process.Kill()
			<-exited
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(30 * time.Second)
	for s.control("check") != nil {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("ssh master connection to %s ended: %v\n%s", tgt.Dest(), err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh master connection not up within 30s\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// cost is the CPU time (user + system) the processes on a path spent on
// a measurement.
type cost struct {
	server time.Duration // converge
	proxy  time.Duration // wsproxy, the ssh master's ProxyCommand
	ssh    time.Duration // the ssh master and the ssh/sftp clients
	agent  time.Duration // this process: the agent (and the harness)
}

func (c cost) total() time.Duration { return c.server + c.proxy + c.ssh + c.agent }

func (c cost) add(d cost) cost {
	return cost{c.server + d.server, c.proxy + d.proxy, c.ssh + d.ssh, c.agent + d.agent}
}

// withCPU runs f and reports the CPU time each process on the path spent.
func (s *session) withCPU(f func() (time.Duration, error)) (time.Duration, cost, error) {
	sample := func() cost {
		self, kids := ownCPU()
		c := cost{ssh: procCPU(s.master.Process.Pid) + kids, agent: self}
		if s.server != 0 {
			c.server = procCPU(s.server)
		}
		for _, p := range childPIDs(s.master.Process.Pid) {
			c.proxy += procCPU(p)
		}
		return c
	}
	before := sample()
	d, err := f()
	after := sample()
	return d, cost{after.server - before.server, after.proxy - before.proxy, after.ssh - before.ssh, after.agent - before.agent}, err
}

// control sends an ssh -O command (check, exit) to the master.
func (s *session) control(op string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.c.Command(ctx, "ssh", s.tgt, "-S", s.sock, "-O", op, s.tgt.Dest()).Run()
}

// command runs prog (ssh or sftp) over the master connection.
func (s *session) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	return s.c.Command(ctx, prog, s.tgt, append([]string{"-o", "ControlPath=" + s.sock, "-o", "ControlMaster=no"}, args...)...)
}

func (s *session) run(cmd *exec.Cmd) (time.Duration, error) {
	var stderr strings.Builder
	if cmd.Stderr == nil {
		cmd.Stderr = &stderr
	}
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args[:1], " "), err, stderr.String())
	}
	return d, nil
}

// sshCat times `ssh host cat NAME`, counting what arrives.
func (s *session) sshCat(name string, size int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := s.command(ctx, "ssh", s.tgt.Dest(), "cat "+name)
	n := &counter{}
	cmd.Stdout = n
	d, err := s.run(cmd)
	if err == nil && n.n != size {
		err = fmt.Errorf("ssh cat %s: got %d bytes, want %d", name, n.n, size)
	}
	return d, err
}

// sftpGet times `sftp get NAME` into a local temporary file.
func (s *session) sftpGet(name string, size int64) (time.Duration, error) {
	local := filepath.Join(s.t.TempDir(), "got.bin")
	defer os.Remove(local)
	d, err := s.sftp(fmt.Sprintf("get %s %s\n", name, local))
	if err == nil {
		err = checkSize(local, size)
	}
	return d, err
}

// sftpPut times `sftp put LOCAL NAME`; remote is NAME's path on the agent.
func (s *session) sftpPut(local, name, remote string, size int64) (time.Duration, error) {
	defer os.Remove(remote)
	d, err := s.sftp(fmt.Sprintf("put %s %s\n", local, name))
	if err == nil {
		err = checkSize(remote, size)
	}
	return d, err
}

func (s *session) sftp(batch string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := s.command(ctx, "sftp", "-q", "-b", "-", s.tgt.Dest())
	cmd.Stdin = strings.NewReader(batch)
	cmd.Stdout = io.Discard
	return s.run(cmd)
}

// echo runs `ssh host cat` and times n single-line write→read round trips
// inside that one session, after a short warm-up.
func (s *session) echo(n int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := s.command(ctx, "ssh", s.tgt.Dest(), "cat")
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	out := bufio.NewReader(outPipe)
	line := []byte("converge echo 0123456789abcdef\n")
	var times []time.Duration
	for i := -10; i < n; i++ {
		start := time.Now()
		if _, err := in.Write(line); err != nil {
			break
		}
		got, err := out.ReadString('\n')
		if err != nil || got != string(line) {
			in.Close()
			cmd.Wait()
			return nil, fmt.Errorf("echo: read %q, %v\n%s", got, err, stderr.String())
		}
		if i >= 0 {
			times = append(times, time.Since(start))
		}
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("echo session: %v\n%s", err, stderr.String())
	}
	return times, nil
}

// connect times a whole `ssh host true`: TCP or WebSocket connection,
// key exchange, authentication, one command.
func connect(c *sshtest.Client, tgt sshtest.Target) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "ssh", tgt, tgt.Dest(), "true")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("ssh true: %v\n%s", err, stderr.String())
	}
	return d, nil
}

var negotiated = regexp.MustCompile(`kex: server->client cipher: (\S+) MAC: (\S+)`)

// defaultCipher asks ssh -v which cipher and MAC the client and the agent
// agree on when nobody chooses.
func defaultCipher(c *sshtest.Client, tgt sshtest.Target) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "ssh", tgt, "-v", tgt.Dest(), "true")
	for i, a := range cmd.Args {
		if a == "LogLevel=ERROR" {
			cmd.Args[i] = "LogLevel=DEBUG1"
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ssh -v true: %v\n%s", err, out)
	}
	m := negotiated.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no cipher in ssh -v output:\n%s", out)
	}
	mac := string(m[2])
	if mac == "<implicit>" {
		return string(m[1]), nil
	}
	return string(m[1]) + " + " + mac, nil
}

func checkSize(path string, want int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() != want {
		return fmt.Errorf("%s has %d bytes, want %d", path, fi.Size(), want)
	}
	return nil
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// median of ds (which it sorts).
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// percentile p (0..100) of ds (which it sorts), nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	i := int(float64(len(ds))*p/100+0.5) - 1
	return ds[max(0, min(i, len(ds)-1))]
}
