//go:build windows

package lifetime

import (
	"os"
	"os/exec"
	"syscall"
)

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid) // opens the process on Windows
	if err != nil {
		return false
	}
	p.Release()
	return true
}

// detachedProcess is DETACHED_PROCESS: no console shared with the parent.
const detachedProcess = 0x00000008

// detachProcess runs cmd without the parent's console, in its own process
// group, so that the end of the CI step that started it does not end it.
func detachProcess(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP | detachedProcess}
}
