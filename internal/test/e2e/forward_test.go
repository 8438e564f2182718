package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// upperService is a TCP service on loopback that reads until EOF and
// answers with what it read in upper case: it works only if the half-close
// of its client reaches it.
func upperService(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveUpper(t, ln)
	return ln
}

// serveUpper answers on ln as upperService does, until the test ends.
func serveUpper(t *testing.T, ln net.Listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write([]byte(strings.ToUpper(string(b))))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// ask sends q to the service behind c, half-closes, and reads the answer.
func ask(t *testing.T, c net.Conn, q string) string {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(q)); err != nil {
		t.Fatalf("write: %v", err)
	}
	switch cw := c.(type) {
	case *net.TCPConn:
		cw.CloseWrite()
	case *net.UnixConn:
		cw.CloseWrite()
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return string(b)
}

// background starts cmd and stops it when the test ends.
func background(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// TestLocalForward: ssh -L reaches a service inside the job.
func TestLocalForward(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "lfwd-job", c)
	tgt := r.target("lfwd-job")
	svc := upperService(t) // "inside the job": the agent dials it

	// ssh -W is the same channel type with stdio as the local end.
	res := c.Run("ssh", tgt, "through -W", "-W", svc.Addr().String(), tgt.Dest())
	if res.Code != 0 || res.Stdout != "THROUGH -W" {
		t.Errorf("ssh -W: exit %d, stdout %q, stderr %q", res.Code, res.Stdout, res.Stderr)
	}
	// The journal records the forward with its target and bytes.
	waitFor(t, "the forward's end in the journal", func() bool {
		for _, e := range a.Journal().Entries() {
			if e.Kind == journal.KindSessionEnd && e.Session.Kind == "forward-local" && e.Session.Target == svc.Addr().String() {
				return e.Session.BytesIn == int64(len("through -W")) && e.Session.BytesOut == int64(len("THROUGH -W"))
			}
		}
		return false
	})

	// ssh -L, with a Unix socket as the local end so no port is guessed.
	sock := filepath.Join(t.TempDir(), "l.sock")
	background(t, c.Command(context.Background(), "ssh", tgt, "-N", "-o", "ExitOnForwardFailure=yes",
		"-L", sock+":"+svc.Addr().String(), tgt.Dest()))
	var conn net.Conn
	waitFor(t, "ssh -L socket", func() bool {
		var err error
		conn, err = net.Dial("unix", sock)
		return err == nil
	})
	if got := ask(t, conn, "through -L"); got != "THROUGH -L" {
		t.Errorf("answer through -L: %q, want THROUGH -L", got)
	}
	// A second connection on the same forward.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if got := ask(t, conn, "again"); got != "AGAIN" {
		t.Errorf("second answer through -L: %q, want AGAIN", got)
	}

	// ssh -L to a Unix socket inside the job (a Docker daemon, say).
	unixSvc, err := net.Listen("unix", filepath.Join(t.TempDir(), "svc.sock"))
	if err != nil {
		t.Fatal(err)
	}
	serveUpper(t, unixSvc)
	sock2 := filepath.Join(t.TempDir(), "l2.sock")
	background(t, c.Command(context.Background(), "ssh", tgt, "-N", "-o", "ExitOnForwardFailure=yes",
		"-L", sock2+":"+unixSvc.Addr().String(), tgt.Dest()))
	waitFor(t, "ssh -L socket to socket", func() bool {
		var err error
		conn, err = net.Dial("unix", sock2)
		return err == nil
	})
	if got := ask(t, conn, "to a socket"); got != "TO A SOCKET" {
		t.Errorf("answer through -L to a Unix socket: %q, want TO A SOCKET", got)
	}

	// A target nobody listens on is refused, and the session survives.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	res = c.Run("ssh", tgt, "", "-W", addr, tgt.Dest())
	if res.Code == 0 {
		t.Errorf("ssh -W to a closed port succeeded: %q", res.Stdout)
	}
}

var allocatedPort = regexp.MustCompile(`Allocated port (\d+) for remote forward`)

// TestRemoteForward: ssh -R makes the user's service reachable inside the
// job, on loopback, for as long as the connection lasts.
func TestRemoteForward(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "rfwd-job", c)
	tgt := r.target("rfwd-job")
	svc := upperService(t) // "on the user's laptop"

	cmd := c.Command(context.Background(), "ssh", tgt, "-N", "-o", "ExitOnForwardFailure=yes",
		"-R", "0:"+svc.Addr().String(), tgt.Dest())
	for i, a := range cmd.Args {
		if a == "LogLevel=ERROR" {
			cmd.Args[i] = "LogLevel=INFO" // ssh tells the allocated port at INFO
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	background(t, cmd)
	ports := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := allocatedPort.FindStringSubmatch(sc.Text()); m != nil {
				ports <- m[1]
			}
		}
		close(ports)
	}()
	var port string
	select {
	case p, ok := <-ports:
		if !ok {
			t.Fatal("ssh -R exited without allocating a port")
		}
		port = p
	case <-time.After(30 * time.Second):
		t.Fatal("ssh -R did not report an allocated port")
	}

	// From inside the job: the agent's listener, on loopback.
	conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		t.Fatalf("dial the remote forward: %v", err)
	}
	if got := ask(t, conn, "through -R"); got != "THROUGH -R" {
		t.Errorf("answer through -R: %q, want THROUGH -R", got)
	}
	if ips, _ := net.InterfaceAddrs(); len(ips) > 0 {
		for _, a := range ips {
			ip, ok := a.(*net.IPNet)
			if !ok || ip.IP.IsLoopback() || ip.IP.To4() == nil {
				continue
			}
			if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.IP.String(), port), time.Second); err == nil {
				c.Close()
				t.Errorf("remote forward reachable on %s: want loopback only", ip.IP)
			}
		}
	}

	// The forward ends with the connection. (SIGTERM, not SIGKILL: a
	// client that vanishes is waited for by the resumable stream.)
	cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "remote forward to close", func() bool {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// TestAgentForward: ssh -A gives the session the user's agent.
func TestAgentForward(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "") // sessions inherit the agent's environment
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "afwd-job", c)
	tgt := r.target("afwd-job")

	sock := filepath.Join(t.TempDir(), "agent.sock")
	background(t, exec.Command("ssh-agent", "-D", "-a", sock))
	waitFor(t, "ssh-agent socket", func() bool { _, err := os.Stat(sock); return err == nil })
	add := exec.Command("ssh-add", c.KeyFile)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "ssh", tgt, "-A", tgt.Dest(), "ssh-add -l")
	cmd.Env = append(cmd.Env, "SSH_AUTH_SOCK="+sock)
	for i, a := range cmd.Args {
		if a == "IdentityAgent=none" { // it would hide the agent from ssh -A too
			cmd.Args[i] = "IdentityAgent=SSH_AUTH_SOCK"
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sshtest") {
		t.Errorf("ssh -A ssh-add -l: %v, output %q; want the client's key listed", err, out)
	}
	res := c.Run("ssh", tgt, "", tgt.Dest(), `echo "SOCK=$SSH_AUTH_SOCK"`)
	if strings.TrimSpace(res.Stdout) != "SOCK=" {
		t.Errorf("without -A: %q, want no SSH_AUTH_SOCK", res.Stdout)
	}
}
