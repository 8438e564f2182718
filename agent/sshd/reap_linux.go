package sshd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// reapOrphans waits for every child of this process that is not ours
// until ctx ends, each time a child exits (SIGCHLD) and each time one of
// ours has been waited for. Those are orphans: processes sessions left
// behind, given to this process by the kernel when it is PID 1 (or a
// subreaper); with nobody to wait for them they would stay zombies.
func (c *children) reapOrphans(ctx context.Context) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		c.reapExited()
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-c.waited:
		}
	}
}

// reapExited waits for the exited children that are not ours, one at a
// time: it peeks at an exited child without reaping it (WNOWAIT), and
// reaps it only if it is not ours. It stops when no child has exited, or
// at one of ours, which os/exec is about to wait for: until then the kernel
// may keep reporting that one, and forget wakes the reaper once it is gone.
// Holding mu keeps start from adding a child between peek and reap.
func (c *children) reapExited() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		pid, err := peekExited()
		if err != nil || pid == 0 || c.ours[pid] {
			return
		}
		var ws syscall.WaitStatus
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err != nil || got != pid {
			return
		}
		if c.reaped != nil {
			c.reaped(pid)
		}
	}
}

// exitedChild is the start of the siginfo_t that waitid fills
// (include/uapi/asm-generic/siginfo.h), which unix.Siginfo keeps opaque:
// three ints, then the union, aligned as a pointer, whose _sigchld member
// starts with si_pid. The padding at the end makes it larger than
// unix.Siginfo.
type exitedChild struct {
	signo, errno, code int32
	_                  [unsafe.Sizeof(uintptr(0)) - 4]byte
	pid                int32
	_                  [unsafe.Sizeof(unix.Siginfo{})]byte
}

// peekExited returns the pid of an exited child, leaving it waitable, or
// 0 when none has exited.
func peekExited() (int, error) {
	var info exitedChild // zero: waitid leaves si_pid 0 when none has exited
	err := unix.Waitid(unix.P_ALL, 0, (*unix.Siginfo)(unsafe.Pointer(&info)), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return int(info.pid), err
}
