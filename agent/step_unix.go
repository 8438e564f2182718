//go:build !windows

package agent

import (
	"os"
	"os/exec"
	"syscall"
)

func prepareStep(*exec.Cmd) {}

// ownGroup puts cmd in a process group of its own, which is sent SIGTERM
// when cmd's context ends: the whole command (make and its children), not
// only its first process.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
}

// forwardSignal passes sig on to p. A signal sent to the whole process
// group (a terminal's Ctrl-C) reaches p twice: once from the terminal,
// once from here; programs treat a second SIGINT or SIGTERM while
// stopping as the first.
func forwardSignal(p *os.Process, sig os.Signal) { p.Signal(sig) }

// processStatus is ps's exit code, or 128 plus the signal that ended it.
func processStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
