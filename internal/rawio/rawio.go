// Package rawio reads and writes a non-blocking descriptor with raw
// system calls: without the runtime's system call bookkeeping, which on
// every call wakes the runtime's monitor thread (sysmon) when it sleeps
// deeply; that thread then wakes every 20 µs until the process is idle
// again. A relay is idle between every two pieces it moves, so this
// wake-up chain is a quarter of a relay's CPU time (see "What the
// relay's CPU per MiB is made of" in docs/design.md, and Go issue 18236).
//
// A raw system call holds the goroutine's processor while it runs, which
// is only right for a call that cannot block: so only non-blocking
// sockets and pipes qualify, and waiting for one stays with Go's poller. Only
// Linux has raw system calls here; elsewhere For returns nil and callers
// use the ordinary Read and Write.
package rawio

import (
	"errors"
	"syscall"
)

// errNotRaw says a descriptor is not one For takes.
var errNotRaw = errors.New("rawio: not a non-blocking descriptor")

// For returns c's descriptor for raw reads and writes, or nil when there
// are none for it: another system, no descriptor, a blocking one (a
// terminal, say, which nothing makes non-blocking), or neither a socket
// nor a pipe (a file on a slow disk).
func For(c syscall.Conn) *FD {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	if err := check(rc); err != nil {
		return nil
	}
	return &FD{rc: rc}
}

// FD reads and writes one descriptor with raw system calls; waits go to
// Go's poller, so deadlines and Close work as on the connection it came
// from. Its errors are that connection's RawConn's (net.ErrClosed,
// os.ErrDeadlineExceeded) or the system call's, as *os.SyscallError.
type FD struct {
	rc syscall.RawConn
}
