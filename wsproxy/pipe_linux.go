package wsproxy

import "syscall"

// pipeSize is what growPipe asks for: Linux's default limit for
// unprivileged processes (/proc/sys/fs/pipe-max-size).
const pipeSize = 1 << 20

// growPipe enlarges the pipe on fd, if it is one, from the default 64 KiB,
// so that a burst of the stream fits without ssh and wsproxy waking each
// other for every 64 KiB. It does nothing to anything else.
func growPipe(fd int) {
	syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETPIPE_SZ, pipeSize)
}
