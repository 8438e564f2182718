package rawio

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// check takes a non-blocking socket or pipe: a read or write of one
// returns at once, with bytes or EAGAIN. A regular file or a device may
// keep the call in the kernel (a slow disk), which only an ordinary call
// may do.
func check(rc syscall.RawConn) error {
	var flags uintptr
	var errno syscall.Errno
	var st syscall.Stat_t
	var statErr error
	if err := rc.Control(func(fd uintptr) {
		flags, _, errno = syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		statErr = syscall.Fstat(int(fd), &st)
	}); err != nil {
		return err
	}
	kind := st.Mode & syscall.S_IFMT
	if errno != 0 || statErr != nil || flags&syscall.O_NONBLOCK == 0 || (kind != syscall.S_IFSOCK && kind != syscall.S_IFIFO) {
		return errNotRaw
	}
	return nil
}

// Read reads like an io.Reader: at least one byte, or an error (io.EOF at
// the end).
func (f *FD) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := f.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno = syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if errno != syscall.EINTR {
				return errno != syscall.EAGAIN // EAGAIN: wait until readable
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}

// Write writes all of p, or fails.
func (f *FD) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		var n uintptr
		var errno syscall.Errno
		rest := p[written:]
		err := f.rc.Write(func(fd uintptr) bool {
			for {
				n, _, errno = syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
				if errno != syscall.EINTR {
					return errno != syscall.EAGAIN // EAGAIN: wait until writable
				}
			}
		})
		if err != nil {
			return written, err
		}
		if errno != 0 {
			return written, os.NewSyscallError("write", errno)
		}
		if n == 0 {
			return written, io.ErrShortWrite // a write that takes nothing would spin
		}
		written += int(n)
	}
	return written, nil
}
