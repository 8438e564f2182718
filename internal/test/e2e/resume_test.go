package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/test/faultproxy"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wsconn"
)

// serverProc is the real converge binary, which a test can kill -9 and
// start again on a new port (a crash and a redeploy).
type serverProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	logs *syncBuffer
}

var listeningRE = regexp.MustCompile(`msg=listening .*addr=(\S+)`)

// startServerProc runs converge on 127.0.0.1:0 with a state directory of
// its own; args add to or override that (the last of a flag given twice
// counts).
func startServerProc(t *testing.T, args ...string) *serverProc {
	t.Helper()
	return startServerProcEnv(t, nil, args...)
}

// startServerProcEnv is startServerProc with env added to the
// environment.
func startServerProcEnv(t *testing.T, env []string, args ...string) *serverProc {
	t.Helper()
	logs := &syncBuffer{}
	args = append([]string{"--addr", "127.0.0.1:0", "--ssh-user", "ciuser", "--state-dir", t.TempDir()}, args...)
	cmd := exec.Command(bin("converge"), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{t: t, cmd: cmd, logs: logs}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("converge logs:\n%s", logs.String())
		}
	})
	waitFor(t, "converge to listen", func() bool {
		m := listeningRE.FindStringSubmatch(logs.String())
		if m != nil {
			p.addr = m[1]
		}
		return m != nil
	})
	return p
}

// kill ends the process with SIGKILL: no drain, no goodbyes.
func (p *serverProc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

// resumeRig is a server, an agent and a user, with a fault-injecting
// proxy on the agent's link and another on the user's.
type resumeRig struct {
	t           *testing.T
	srv         *serverProc
	agentProxy  *faultproxy.Proxy
	clientProxy *faultproxy.Proxy
	agent       *runningAgent
	c           *sshtest.Client
	tgt         sshtest.Target
	state       string // the server's state directory, kept across restarts
}

func newResumeRig(t *testing.T, id string, mods ...func(*agent.Config)) *resumeRig {
	state := t.TempDir()
	srv := startServerProc(t, "--state-dir", state)
	r := &resumeRig{t: t, srv: srv, c: sshtest.New(t), state: state}
	r.agentProxy = newProxy(t, srv.addr)
	r.clientProxy = newProxy(t, srv.addr)
	r.agent = startAgent(t, viaProxy(r.agentProxy), id, r.c, append([]func(*agent.Config){func(cfg *agent.Config) { cfg.ResumeWindow = time.Minute }}, mods...)...)
	r.tgt = viaProxy(r.clientProxy).target(id)
	return r
}

// restartServer kills the server and starts a new one on a new port, as a
// crash followed by a redeploy; the proxies then lead to the new one.
func (r *resumeRig) restartServer() {
	r.t.Helper()
	r.srv.kill()
	r.srv = startServerProc(r.t, "--state-dir", r.state)
	r.agentProxy.Retarget(r.srv.addr)
	r.clientProxy.Retarget(r.srv.addr)
	r.agentProxy.Cut()
	r.clientProxy.Cut()
}

// echoSession is a long-running `ssh ... cat`: what goes in must come back
// out, byte for byte, whatever happens to the links meanwhile.
type echoSession struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	sent  bytes.Buffer
	got   bytes.Buffer
	round int
}

func startEcho(t *testing.T, c *sshtest.Client, tgt sshtest.Target) *echoSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := c.Command(ctx, "ssh", tgt, tgt.Dest(), "cat")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ssh cat stderr:\n%s", stderr.String())
		}
	})
	e := &echoSession{t: t, cmd: cmd, in: in, out: bufio.NewReader(out)}
	e.roundTrip()
	return e
}

// roundTrip sends a burst of random lines and reads their echo.
func (e *echoSession) roundTrip() {
	e.t.Helper()
	e.round++
	var burst bytes.Buffer
	for i := range 50 {
		b := make([]byte, 30)
		rand.Read(b)
		fmt.Fprintf(&burst, "round %d line %d %x\n", e.round, i, b)
	}
	e.sent.Write(burst.Bytes())
	if _, err := e.in.Write(burst.Bytes()); err != nil {
		e.t.Fatalf("echo round %d: write: %v", e.round, err)
	}
	got := make([]byte, burst.Len())
	if _, err := io.ReadFull(e.out, got); err != nil {
		e.t.Fatalf("echo round %d: read: %v (after %d bytes)", e.round, err, e.got.Len())
	}
	e.got.Write(got)
	if !bytes.Equal(got, burst.Bytes()) {
		e.t.Fatalf("echo round %d came back different:\n got %q\nwant %q", e.round, got, burst.Bytes())
	}
}

// finish ends the session and checks it ended cleanly and byte-exact.
func (e *echoSession) finish() {
	e.t.Helper()
	e.in.Close()
	rest, err := io.ReadAll(e.out)
	if err != nil || len(rest) != 0 {
		e.t.Errorf("after the last round: %q, %v; want EOF", rest, err)
	}
	if err := e.cmd.Wait(); err != nil {
		e.t.Errorf("ssh cat: %v; want exit 0", err)
	}
	if !bytes.Equal(e.sent.Bytes(), e.got.Bytes()) {
		e.t.Errorf("echo stream differs: sent %d bytes, got %d", e.sent.Len(), e.got.Len())
	}
}

// TestSessionsSurviveFaults runs an sftp upload of 64 MiB and an
// interactive echo session through the relay while the fault strikes
// mid-transfer: both must finish byte-exact, with no retry by the user.
func TestSessionsSurviveFaults(t *testing.T) {
	t.Parallel()
	data := make([]byte, 64<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "payload.bin")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		// fault strikes at each of the given fractions of the upload.
		at    []float64
		fault func(r *resumeRig)
	}{
		{"server killed and restarted", []float64{0.4}, (*resumeRig).restartServer},
		{"agent link reset three times", []float64{0.2, 0.45, 0.7}, func(r *resumeRig) { r.agentProxy.Cut() }},
		{"client link cut", []float64{0.5}, func(r *resumeRig) { r.clientProxy.Cut() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "resume-" + strings.ReplaceAll(tc.name, " ", "-")
			r := newResumeRig(t, id)
			echo := startEcho(t, r.c, r.tgt)

			upload := filepath.Join(r.agent.Dir, "up.bin")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			sftp := r.c.Command(ctx, "sftp", r.tgt, "-b", "-", r.tgt.Dest())
			sftp.Stdin = strings.NewReader(fmt.Sprintf("put %s up.bin\n", local))
			var sftpOut syncBuffer
			sftp.Stdout, sftp.Stderr = &sftpOut, &sftpOut
			if err := sftp.Start(); err != nil {
				t.Fatal(err)
			}
			for _, frac := range tc.at {
				mark := int64(frac * float64(len(data)))
				waitFor(t, fmt.Sprintf("upload to pass %d%%", int(frac*100)), func() bool {
					fi, err := os.Stat(upload)
					return err == nil && fi.Size() >= mark
				})
				tc.fault(r)
				echo.roundTrip()
			}
			if err := sftp.Wait(); err != nil {
				t.Fatalf("sftp put: %v\n%s", err, sftpOut.String())
			}
			got, err := os.ReadFile(upload)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("uploaded file differs: %d bytes, want %d (first difference at %d)", len(got), len(data), firstDifference(got, data))
			}
			echo.roundTrip()
			echo.finish()
		})
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestNoResumeFallsBack: with --no-resume, or against an agent stream
// without the subprotocol, wsproxy still works as a plain pipe.
func TestNoResumeFallsBack(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "plain-job", c)
	tgt := r.target("plain-job")
	tgt.ProxyCommand = bin("wsproxy") + " --no-resume " + r.URL + "/client/plain-job"
	if got := c.SSH(tgt, 0, "echo plain"); strings.TrimSpace(got.Stdout) != "plain" {
		t.Errorf("stdout %q, want plain", got.Stdout)
	}
}

// TestPlainStreamDiesWithItsLink is the control experiment for
// TestSessionsSurviveFaults: without resumption, cutting the client link
// ends the session. (If this passes for the wrong reason, the resume tests
// prove nothing.)
func TestPlainStreamDiesWithItsLink(t *testing.T) {
	t.Parallel()
	srv := startServerProc(t)
	p := newProxy(t, srv.addr)
	c := sshtest.New(t)
	startAgent(t, viaProxy(p), "fragile", c)
	tgt := viaProxy(p).target("fragile")
	tgt.ProxyCommand = bin("wsproxy") + " --no-resume ws://" + p.Addr() + "/client/fragile"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "ssh", tgt, tgt.Dest(), "cat")
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(in, "before\n")
	br := bufio.NewReader(out)
	if line, err := br.ReadString('\n'); line != "before\n" {
		t.Fatalf("echo before the cut: %q, %v", line, err)
	}
	p.Cut()
	io.WriteString(in, "after\n")
	if line, err := br.ReadString('\n'); err == nil {
		t.Fatalf("a plain stream survived a cut link (read %q); the fault injection does not work", line)
	}
	cmd.Wait()
}

// TestTCPToWSResumes: tcptows asks for resumable streams too; an ssh
// session through its port survives cuts of its WebSocket.
func TestTCPToWSResumes(t *testing.T) {
	t.Parallel()
	r := newResumeRig(t, "tcp-resume")
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin("tcptows"), fmt.Sprint(port), "ws://"+r.clientProxy.Addr()+"/client/tcp-resume")
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	waitFor(t, "tcptows listening", func() bool { return strings.Contains(logs.String(), "listening") })

	echo := startEcho(t, r.c, sshtest.Target{User: "ciuser", Alias: "tcp-resume", Port: port})
	for range 2 {
		if n := r.clientProxy.Cut(); n == 0 {
			t.Fatal("no connection to cut")
		}
		echo.roundTrip()
	}
	echo.finish()
	if t.Failed() {
		t.Logf("tcptows logs:\n%s", logs.String())
	}
}

// freePort returns a loopback port that was free a moment ago, for
// commands that take a port number.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// knockResumable plays someone who knows an ID but has no key: it starts
// a resumable session at url, waits for the agent's answer, and drops the
// link. It reports whether the agent took the session.
func knockResumable(t *testing.T, url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, url, wsconn.Options{Subprotocols: []string{resume.Protocol}})
	if err != nil {
		t.Errorf("knock: %v", err)
		return false
	}
	if c.Subprotocol() != resume.Protocol {
		c.CloseNow()
		t.Errorf("knock: the agent does not offer %s", resume.Protocol)
		return false
	}
	noRedial := func(context.Context) (io.ReadWriteCloser, error) { return nil, errors.New("no redial") }
	rc, err := resume.Dial(resume.WebSocket(c, wsconn.PingInterval, wsconn.PingTimeout), noRedial,
		resume.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return false // refused
	}
	rc.Abort() // drops the link, no goodbye
	<-rc.Done()
	return true
}

// TestResumeKnocksDoNotLockOut (issue 10, finding 2): someone who knows an
// ID but has no key starts more resumable sessions than the agent holds
// and drops each link once the agent has answered. Users must still log
// in right after, through wsproxy with resumable and with plain streams,
// and a resumable session must still survive a cut link.
func TestResumeKnocksDoNotLockOut(t *testing.T) {
	r := newResumeRig(t, "knocked")
	url := "ws://" + r.srv.addr + "/client/knocked"
	var taken atomic.Int32
	var wg sync.WaitGroup
	jobs := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for range jobs {
				if knockResumable(t, url) {
					taken.Add(1)
				}
			}
		})
	}
	for range 300 { // more than the agent's 256 sessions
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	t.Logf("the agent took %d of 300 sessions", taken.Load())

	echo := startEcho(t, r.c, r.tgt)
	if n := r.clientProxy.Cut(); n == 0 {
		t.Fatal("no connection to cut")
	}
	echo.roundTrip()
	echo.finish()

	plain := r.tgt
	plain.ProxyCommand = bin("wsproxy") + " --no-resume ws://" + r.clientProxy.Addr() + "/client/knocked"
	if got := r.c.SSH(plain, 0, "echo plain"); strings.TrimSpace(got.Stdout) != "plain" {
		t.Errorf("plain stream after the knocks: stdout %q, want plain", got.Stdout)
	}
}
