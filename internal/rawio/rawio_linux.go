package rawio

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

func check(rc syscall.RawConn) error {
	var flags uintptr
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		flags, _, errno = syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	}); err != nil {
		return err
	}
	if errno != 0 || flags&syscall.O_NONBLOCK == 0 {
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
