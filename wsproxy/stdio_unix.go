//go:build !windows

package wsproxy

import (
	"os"
	"syscall"

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
