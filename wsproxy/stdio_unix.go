//go:build !windows

package wsproxy

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// OpenStdio returns the process's stdin and stdout such that closing stdin
// interrupts a pending read: pipes and sockets (what ssh gives a
// ProxyCommand) are put in non-blocking mode, which Go's poller then
// handles, so a relay can end while ssh still holds the pipe open. A
// terminal is left alone: non-blocking mode would outlive us and break the
// user's shell.
func OpenStdio() (in, out *os.File) {
	return pollable(0, "stdin"), pollable(1, "stdout")
}

func pollable(fd int, name string) *os.File {
	if !term.IsTerminal(fd) {
		syscall.SetNonblock(fd, true) // on failure the file still works, only uninterruptibly
		growPipe(fd)
	}
	return os.NewFile(uintptr(fd), name)
}

// ReleaseStderr points the process's standard error at the null device,
// so that a program waiting for the end of the stderr this process
// inherited (one capturing ssh's stderr, which ssh passes on to its
// ProxyCommand) no longer waits for this process. Later writes to stderr
// are lost.
func ReleaseStderr() {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return // keep the old stderr: late, but not lost
	}
	defer null.Close()
	unix.Dup2(int(null.Fd()), 2)
}
