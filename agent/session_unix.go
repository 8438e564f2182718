//go:build !windows

package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/gliderlabs/ssh"
)

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

func signalNumber(ee *exec.ExitError) int {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int(ws.Signal())
	}
	return 0
}

// run starts cmd for s and waits for it, returning its exit status. When
// the client goes away first, the process group is hung up and, if it does
// not exit, killed.
func (a *Agent) run(s ssh.Session, cmd *exec.Cmd) (int, error) {
	ptyReq, winCh, isPty := s.Pty()
	var wait func() error
	if isPty {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: uint16(ptyReq.Window.Height), Cols: uint16(ptyReq.Window.Width)})
		if err != nil {
			return 255, fmt.Errorf("start shell with pty: %w", err)
		}
		defer f.Close()
		go func() { // ends when the session's window channel closes
			for w := range winCh {
				pty.Setsize(f, &pty.Winsize{Rows: uint16(w.Height), Cols: uint16(w.Width)})
			}
		}()
		go io.Copy(f, s) // ends when the session or the pty closes
		output := make(chan struct{})
		go func() { io.Copy(s, f); close(output) }()
		wait = func() error {
			err := cmd.Wait()
			// Give the pty a moment to drain what the shell wrote last.
			select {
			case <-output:
			case <-time.After(time.Second):
			}
			return err
		}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return 255, err
		}
		cmd.Stdout = s
		cmd.Stderr = s.Stderr()
		cmd.WaitDelay = 2 * time.Second
		if err := cmd.Start(); err != nil {
			return 255, fmt.Errorf("start command: %w", err)
		}
		go func() { io.Copy(stdin, s); stdin.Close() }()
		wait = cmd.Wait
	}

	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case err := <-done:
		return exitCode(err)
	case <-s.Context().Done():
		// The client left: end the whole process group.
		pgid := cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGHUP)
		select {
		case err := <-done:
			return exitCode(err)
		case <-time.After(3 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			err := <-done
			if err == nil {
				err = errors.New("killed after the client left")
			}
			return exitCode(err)
		}
	}
}
