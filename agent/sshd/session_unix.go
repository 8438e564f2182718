//go:build !windows

package sshd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// killGrace is how long a session's processes have between SIGHUP and
// SIGKILL, and how long the last output may take to drain.
const killGrace = 3 * time.Second

func loginShell() string {
	if sh := os.Getenv("SHELL"); sh != "" {
		if _, err := os.Stat(sh); err == nil {
			return sh
		}
	}
	for _, sh := range []string{"bash", "sh"} {
		if p, err := exec.LookPath(sh); err == nil {
			return p
		}
	}
	return "/bin/sh"
}

func shellCommandFlag(string) string { return "-c" }

// signalNames are the signals RFC 4254 names in "exit-signal" and "signal"
// requests.
var signalNames = map[syscall.Signal]ssh.Signal{
	syscall.SIGABRT: ssh.SIGABRT, syscall.SIGALRM: ssh.SIGALRM, syscall.SIGFPE: ssh.SIGFPE,
	syscall.SIGHUP: ssh.SIGHUP, syscall.SIGILL: ssh.SIGILL, syscall.SIGINT: ssh.SIGINT,
	syscall.SIGKILL: ssh.SIGKILL, syscall.SIGPIPE: ssh.SIGPIPE, syscall.SIGQUIT: ssh.SIGQUIT,
	syscall.SIGSEGV: ssh.SIGSEGV, syscall.SIGTERM: ssh.SIGTERM, syscall.SIGUSR1: ssh.SIGUSR1,
	syscall.SIGUSR2: ssh.SIGUSR2,
}

func signalNumber(ee *exec.ExitError) int {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int(ws.Signal())
	}
	return 0
}

// reportSignal tells the client which signal ended the command, with an
// "exit-signal" request (RFC 4254 6.10). OpenSSH's ssh ignores it and uses
// the exit status that follows (128+signal, as shells do); other clients
// (Go's x/crypto/ssh) show the signal.
func reportSignal(s ssh.Session, err error) {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return
	}
	name, ok := signalNames[ws.Signal()]
	if !ok {
		return
	}
	s.SendRequest("exit-signal", false, gossh.Marshal(struct {
		Signal     string
		CoreDumped bool
		Error      string
		Lang       string
	}{string(name), ws.CoreDump(), "", ""}))
}

// run starts cmd for s in a session of its own (setsid) and waits for it,
// returning its exit status. When the client leaves first, the session is
// hung up and the command killed if it does not exit within killGrace.
// Then endSession ends what the session left behind, so background jobs
// do not outlive the logout to keep the CI job busy.
func (d *Server) run(s ssh.Session, cmd *exec.Cmd) (int, error) {
	if sock, stop, err := forwardAgent(s); err != nil {
		d.log.Warn("agent forwarding unavailable", "error", err)
	} else if sock != "" {
		defer stop()
		cmd.Env = append(cmd.Env, "SSH_AUTH_SOCK="+sock)
	}
	start := startPipes
	if hasPty(s) {
		start = startPty
	}
	var drain, release func()
	err := d.children.start(func() (int, error) {
		var err error
		if drain, release, err = start(s, cmd); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		return 255, err
	}
	defer release()
	sid := cmd.Process.Pid // the command leads a session of its own
	defer forwardSignals(s, sid)()

	err = waitCommand(s, cmd, sid)
	d.children.forget(sid)

	if ended, kept := endSession(sid); ended+kept > 0 {
		d.log.Info("session left processes behind", "ended", ended, "kept_nohup", kept)
	}
	drain()
	reportSignal(s, err)
	return exitCode(err)
}

// startPty starts cmd on a new terminal, sized and resized like the
// client's window, as the leader of a session with that terminal as its
// controlling one, and copies between the terminal and s. drain waits (at
// most killGrace) for the last output once the session's processes are
// gone; release stops following the window and closes the terminal.
func startPty(s ssh.Session, cmd *exec.Cmd) (drain, release func(), err error) {
	ptyReq, winCh, _ := s.Pty()
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: uint16(ptyReq.Window.Height), Cols: uint16(ptyReq.Window.Width)})
	if err != nil {
		return nil, nil, fmt.Errorf("start shell with pty: %w", err)
	}
	stopResize := followWindow(winCh, func(w ssh.Window) {
		pty.Setsize(f, &pty.Winsize{Rows: uint16(w.Height), Cols: uint16(w.Width)})
	})
	go io.Copy(f, s) // ends when the session or the pty closes
	output := make(chan struct{})
	go func() { io.Copy(s, f); close(output) }()
	drain = func() {
		// The copy ends when the last holder of the terminal is gone.
		select {
		case <-output:
		case <-time.After(killGrace):
		}
	}
	return drain, func() { stopResize(); f.Close() }, nil
}

// startPipes starts cmd without a terminal, as the leader of a session of
// its own, with our own pipes for stdin, stdout and stderr, so that Wait
// returns when the command exits even if a background child still holds
// stdout; the copies drain once the session's processes are gone. drain
// waits for them (at most killGrace, then cuts them); release closes the
// command's stdin, which unblocks the stdin copy if the client still
// sends.
func startPipes(s ssh.Session, cmd *exec.Cmd) (drain, release func(), err error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, outW, errW
	err = cmd.Start()
	stdinR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		stdinW.Close()
		outR.Close()
		errR.Close()
		return nil, nil, fmt.Errorf("start command: %w", err)
	}
	go func() { io.Copy(stdinW, s); stdinW.Close() }() // ends with the session or the command's stdin
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); io.Copy(s, outR); outR.Close() }()
	go func() { defer copies.Done(); io.Copy(s.Stderr(), errR); errR.Close() }()
	drain = func() {
		copied := make(chan struct{})
		go func() { copies.Wait(); close(copied) }()
		select {
		case <-copied:
		case <-time.After(killGrace):
			outR.Close()
			errR.Close()
			<-copied
		}
	}
	return drain, func() { stdinW.Close() }, nil
}

// forwardSignals sends the signals the client asks for to the process
// group of sid, the command's, until the returned stop is called (stop
// waits for the forwarding goroutine to end).
func forwardSignals(s ssh.Session, sid int) (stop func()) {
	// sigs is never closed: gliderlabs may still replay buffered signals
	// into it after Signals(nil).
	sigs := make(chan ssh.Signal, 4)
	s.Signals(sigs)
	stopSigs, sigDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sigDone)
		for {
			select {
			case name := <-sigs:
				for num, n := range signalNames {
					if n == name {
						syscall.Kill(-sid, num)
					}
				}
			case <-stopSigs:
				return
			}
		}
	}()
	return func() { s.Signals(nil); close(stopSigs); <-sigDone }
}

// waitCommand waits for cmd, which leads session sid, and returns what
// cmd.Wait returned. When the client leaves first, it hangs up the
// session, as a terminal would, and kills the command's process group if
// the command has not exited within killGrace.
func waitCommand(s ssh.Session, cmd *exec.Cmd, sid int) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-s.Context().Done():
	}
	signalSession(sid, syscall.SIGHUP)
	select {
	case err := <-done:
		return err
	case <-time.After(killGrace):
	}
	syscall.Kill(-sid, syscall.SIGKILL) // the command's own group
	if err := <-done; err != nil {
		return err
	}
	return errors.New("killed after the client left")
}

// sessionProc is a live process of a session.
type sessionProc struct {
	pid        int
	ignoresHUP bool // nohup and the like: it asked to outlive its terminal
}

// endSession ends what a finished session left behind, as a terminal
// hangup would, but for every process group of the session: background
// and stopped jobs are hung up (and continued, so they see it), and killed
// if still there after killGrace. Processes that ignore SIGHUP (started
// with nohup) asked to outlive the session and are left running, as sshd
// leaves them. It returns how many processes it ended and how many it
// left.
func endSession(sid int) (ended, kept int) {
	hangUp := func() []int {
		var pids []int
		for _, p := range sessionProcesses(sid) {
			if !p.ignoresHUP {
				pids = append(pids, p.pid)
			}
		}
		return pids
	}
	for _, p := range sessionProcesses(sid) {
		if p.ignoresHUP {
			kept++
		}
	}
	pids := hangUp()
	if len(pids) == 0 {
		return 0, kept
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGHUP)
		syscall.Kill(pid, syscall.SIGCONT) // a stopped job must run to see the hangup
	}
	deadline := time.Now().Add(killGrace)
	for time.Now().Before(deadline) {
		if len(hangUp()) == 0 {
			return len(pids), kept
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range hangUp() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(pids), kept
}

// signalSession sends sig to every process in session sid, and to its
// leader's process group where the session cannot be listed.
func signalSession(sid int, sig syscall.Signal) {
	for _, p := range sessionProcesses(sid) {
		syscall.Kill(p.pid, sig)
	}
	syscall.Kill(-sid, sig)
}

// forwardAgent serves ssh -A for s: a Unix socket in a private temporary
// directory that leads to the client's agent. Like an ssh -R listener it
// exists because the user asked for it. It returns "" when the client did
// not ask.
func forwardAgent(s ssh.Session) (sock string, stop func(), err error) {
	if !ssh.AgentRequested(s) {
		return "", nil, nil
	}
	ln, err := ssh.NewAgentListener() // in a fresh 0700 directory
	if err != nil {
		return "", nil, fmt.Errorf("agent socket: %w", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); ssh.ForwardAgentConnections(ln, s) }()
	sock = ln.Addr().String()
	return sock, func() {
		ln.Close()
		<-done
		os.RemoveAll(filepath.Dir(sock))
	}, nil
}
