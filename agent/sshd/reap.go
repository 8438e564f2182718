package sshd

import (
	"context"
	"sync"
)

// children are the child processes the agent starts and waits for itself
// (the commands of sessions). An agent that is PID 1 also reaps orphans
// (see reapOrphans); it must never wait for one of these, or os/exec's Wait
// would lose the exit status. So every child the agent waits for is
// started through start, and released by forget once Wait has returned;
// a child started through start must be waited for (until it is, its exit
// holds up the reaping of later orphans).
type children struct {
	mu     sync.Mutex    // held while starting a child, and while reaping
	ours   map[int]bool  // pid → started through start, not yet forgotten
	waited chan struct{} // capacity 1: forget's wake-up call to the reaper
	reaped func(pid int) // tests: called for each orphan reaped, mu held
}

func newChildren() *children {
	return &children{ours: make(map[int]bool), waited: make(chan struct{}, 1)}
}

// start calls start, which starts one child and returns its pid, with
// reaping held off, and records the child as ours: the reaper cannot see
// it exit before it is recorded.
func (c *children) start(start func() (pid int, err error)) error {
	hangupAtDefault()
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, err := start()
	if err == nil {
		c.ours[pid] = true
	}
	return err
}

// forget releases a child started through start, once its Wait has
// returned, and wakes the reaper: an exited child of ours hides later
// orphans from it (see reapOrphans).
func (c *children) forget(pid int) {
	c.mu.Lock()
	delete(c.ours, pid)
	c.mu.Unlock()
	select {
	case c.waited <- struct{}{}:
	default:
	}
}

// ReapOrphans reaps orphans (see reapOrphans) until the returned stop is
// called; stop waits for the reaper to end. Call it only when this
// process is PID 1 (as in a container started as `docker run IMAGE
// agent`, where nobody else would reap) or a subreaper, and never while
// anything else in the process waits for children it did not start
// through this Server. The reaper outlives ctx's cancellation so that it
// still reaps what the end of sessions leaves behind: the caller stops it
// last, after Close. On systems other than Linux it does nothing.
func (d *Server) ReapOrphans(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); d.children.reapOrphans(ctx) }()
	return func() { cancel(); <-done }
}
