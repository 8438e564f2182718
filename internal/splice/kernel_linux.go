package splice

import (
	"net"
	"syscall"
)

// pipeSize is the capacity asked for the pipe between the two sockets,
// and so the most one splice(2) call moves: Linux's default limit for
// unprivileged processes (/proc/sys/fs/pipe-max-size).
const pipeSize = 1 << 20

// ExtraFiles is how many file descriptors Splice holds besides its two
// streams' own: between two TCP connections, a pipe (two descriptors)
// for each direction.
const ExtraFiles = 4

// rawSplice moves up to n bytes from in to out with a raw splice(2): both
// are non-blocking (Go's sockets, our pipe, and SPLICE_F_NONBLOCK for the
// pipe), so the call cannot block, and it skips the runtime's system call
// bookkeeping, which wakes the runtime's monitor thread each time the
// relay comes back from idle; see internal/rawio.
func rawSplice(in, out, n int) (int64, error) {
	const flags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK
	r, _, errno := syscall.RawSyscall6(syscall.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), flags)
	if errno != 0 {
		return 0, errno
	}
	return int64(r), nil
}

// kernelCopy moves bytes from src to dst through a pipe with splice(2),
// so they never enter user space: socket → pipe, then pipe → socket. It
// reports each piece written to count (if set), so byte counters move
// while the stream runs. handled is false, with nothing moved, when the
// kernel refuses (no pipe, or splice not supported for these sockets);
// the caller then copies by hand. Closing either connection ends it.
func kernelCopy(dst, src *net.TCPConn, count func(int64)) (written int64, handled bool, err error) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return 0, false, nil
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	syscall.Syscall(syscall.SYS_FCNTL, uintptr(p[1]), syscall.F_SETPIPE_SZ, pipeSize) // best effort
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	wc, err := dst.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	for {
		var in int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				in, serr = rawSplice(int(fd), p[1], pipeSize)
				if serr != syscall.EINTR {
					return serr != syscall.EAGAIN // EAGAIN: wait until readable
				}
			}
		})
		if written == 0 && serr == syscall.EINVAL {
			return 0, false, nil // nothing moved: the caller can copy by hand
		}
		if err == nil {
			err = serr
		}
		if err != nil {
			return written, true, err
		}
		if in == 0 {
			return written, true, nil // src ended
		}
		for in > 0 {
			var out int64
			err := wc.Write(func(fd uintptr) bool {
				for {
					out, serr = rawSplice(p[0], int(fd), int(in))
					if serr != syscall.EINTR {
						return serr != syscall.EAGAIN // EAGAIN: wait until writable
					}
				}
			})
			if err == nil {
				err = serr
			}
			if out > 0 {
				in -= out
				written += out
				if count != nil {
					count(out)
				}
			}
			if err != nil {
				return written, true, err
			}
		}
	}
}
