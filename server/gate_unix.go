//go:build unix

package server

import (
	"net"
	"syscall"
)

// rawOf is c's socket when the control loop can wait on it itself (see
// frameGate): a plain TCP connection. nil otherwise (TLS keeps bytes of
// its own).
func rawOf(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// readable peeks at the socket: done (true) when a byte is there, the
// stream ended or it failed, all of which the read that follows reports.
func readable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != syscall.EINTR {
			return err != syscall.EAGAIN
		}
	}
}
