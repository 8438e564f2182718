//go:build !windows

package lifetime

import (
	"errors"
	"os/exec"
	"syscall"
)

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// detachProcess makes cmd its own session, so that the end of the CI step
// that started it (a hangup, the step's process group being signalled)
// does not end it.
func detachProcess(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
}
