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
	const flags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK
	for {
		var in int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				in, serr = syscall.Splice(int(fd), nil, p[1], nil, pipeSize, flags)
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
					out, serr = syscall.Splice(p[0], nil, int(fd), nil, int(in), flags)
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
