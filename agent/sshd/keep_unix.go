//go:build !windows

package sshd

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/gliderlabs/ssh"
	"golang.org/x/sys/unix"
)

// keepShell starts cmd, the user's interactive shell, as a kept shell
// and attaches s to it as its first writer. It returns the shell's exit
// status when the shell ended while s was attached; when s left or
// detached first, the shell keeps running and the status is 0. onEnd is
// called when the shell has ended (at once if it cannot start). tap is
// the shell's recording (nil: none), which the shell owns from now on.
func (d *Server) keepShell(s ssh.Session, cmd *exec.Cmd, tap *shellTap, onEnd func()) (int, error) {
	if sock, stop, err := forwardAgent(s); err != nil {
		d.log.Warn("agent forwarding unavailable", "error", err)
	} else if sock != "" {
		defer stop() // ssh -A lasts as long as this client's session
		cmd.Env = append(cmd.Env, "SSH_AUTH_SOCK="+sock)
	}
	sh, err := d.startShell(s, cmd, tap, onEnd)
	if err != nil {
		onEnd()
		tap.close()
		return 255, err
	}
	p := d.participant(s.Context())
	fmt.Fprintf(s, "[converge] This is shell %s. It keeps running if you are cut off; detach: %s; back: ssh -t %s attach %s\r\n",
		sh.name, detachHint, d.id(), sh.name)
	code, _ := d.attachClient(sh, &client{s: s, who: p.name, observer: p.observer, conn: p.conn}, true)
	return code, nil
}

// startShell starts cmd on a new terminal sized like s's window, as the
// leader of a session of its own, and keeps it: one goroutine reads its
// output into the scroll-back, another waits for it to end. The terminal
// goes through tap (the recording, closed with the terminal).
func (d *Server) startShell(s ssh.Session, cmd *exec.Cmd, tap *shellTap, onEnd func()) (*shell, error) {
	ptyReq, _, _ := s.Pty()
	now := time.Now()
	sh := &shell{started: now, out: newRing(scrollBack), changed: make(chan struct{}), done: make(chan struct{}),
		clients: make(map[*client]struct{}), size: ptyReq.Window, input: now}
	var f *os.File
	err := d.children.start(func() (int, error) {
		var err error
		if f, err = pty.StartWithSize(cmd, winsize(ptyReq.Window)); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		return nil, fmt.Errorf("start shell with pty: %w", err)
	}
	if f, err = pollable(f); err != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		d.children.forget(cmd.Process.Pid)
		return nil, fmt.Errorf("shell terminal: %w", err)
	}
	sh.term, sh.sid = tap.term(ptyTerm{f}), cmd.Process.Pid
	keep := d.watch.Keep()
	sh.release = func() { keep(); onEnd() }
	closing := d.shells.add(sh) // named and listed before it can end
	readDone := make(chan struct{})
	d.shells.wg.Add(2)
	go func() { defer d.shells.wg.Done(); defer close(readDone); sh.read() }()
	go func() { defer d.shells.wg.Done(); d.waitShell(sh, cmd, readDone) }()
	if closing {
		d.shells.hangUp(sh)
	}
	d.log.Info("shell kept", "shell", sh.name, "pid", sh.sid)
	return sh, nil
}

// read copies the terminal's output into the scroll-back until the
// terminal is closed or nothing holds its other side any more.
func (sh *shell) read() {
	buf := make([]byte, 32<<10)
	for {
		n, err := sh.term.Read(buf)
		if n > 0 {
			sh.output(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// waitShell waits for the shell to exit, ends what its session left
// behind (as run does), waits (at most killGrace) for its last output,
// and ends the shell for everyone attached.
func (d *Server) waitShell(sh *shell, cmd *exec.Cmd, readDone <-chan struct{}) {
	err := cmd.Wait()
	d.children.forget(sh.sid)
	if ended, kept := endSession(sh.sid); ended+kept > 0 {
		d.log.Info("shell left processes behind", "shell", sh.name, "ended", ended, "kept_nohup", kept)
	}
	select {
	case <-readDone:
	case <-time.After(killGrace):
	}
	sh.term.Close()
	<-readDone
	code, _ := exitCode(err)
	d.shells.remove(sh)
	sh.end(code)
	sh.release()
	d.log.Info("shell ended", "shell", sh.name, "exit", code)
}

// hangUp ends a kept shell as a terminal hangup would, and kills it if
// it is still there after killGrace.
func (n *shellNames) hangUp(sh *shell) {
	signalSession(sh.sid, syscall.SIGHUP)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		t := time.NewTimer(killGrace)
		defer t.Stop()
		select {
		case <-sh.done:
		case <-t.C:
			signalSession(sh.sid, syscall.SIGKILL)
		}
	}()
}

func winsize(w ssh.Window) *pty.Winsize {
	return &pty.Winsize{Rows: uint16(w.Height), Cols: uint16(w.Width)}
}

// ptyTerm is a terminal's master side.
type ptyTerm struct{ *os.File }

// resize sets the terminal's size (pty.Setsize would call Fd, which
// makes the file blocking).
func (t ptyTerm) resize(w ssh.Window) {
	rc, err := t.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(w.Height), Col: uint16(w.Width)})
	})
}

// pollable returns the terminal f (which pty.Start made blocking, through
// Fd) as a file in the runtime's poller, and closes f: then Close ends a
// Read in progress, so a shell whose terminal a leftover process still
// holds cannot keep the agent from ending.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func (t ptyTerm) foreground(sid int) bool {
	rc, err := t.SyscallConn()
	if err != nil {
		return false
	}
	pgrp := sid
	rc.Control(func(fd uintptr) {
		if g, err := unix.IoctlGetInt(int(fd), unix.TIOCGPGRP); err == nil {
			pgrp = g
		}
	})
	return pgrp != sid
}
