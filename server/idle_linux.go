package server

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// idlePoller waits for every idle agent's next message on one goroutine,
// in an epoll set of its own, so that an idle agent costs the server no
// goroutine and no stack (docs/design.md, "Where an idle agent's memory
// goes"). An agent is parked in it between messages: its control socket is
// in the set, one-shot, and the agent is in parked. Whoever takes it out
// of parked owns it: the poller when the socket is readable, or the close
// of its connection (a close removes a socket from an epoll set without an
// event, see gatedConn). The owner runs step on a goroutine of its own,
// which reads the message and parks the agent again.
type idlePoller struct {
	epfd int // the epoll set
	wake int // an eventfd in the set: written to stop the poller

	mu      sync.Mutex
	parked  map[uint32]*agentConn
	next    uint32 // the last pollID given
	stopped bool
	done    chan struct{} // closed when run has returned
}

// wakeID is the wake eventfd's key in the set; agents' keys start above.
const wakeID = 0

func newIdlePoller() (*idlePoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeID}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, err
	}
	p := &idlePoller{epfd: epfd, wake: wake, parked: make(map[uint32]*agentConn), done: make(chan struct{})}
	go p.run()
	return p, nil
}

// run hands each agent whose socket is readable to a step of its own,
// until stop.
func (p *idlePoller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == wakeID {
				return
			}
			if a := p.takeID(uint32(ev.Fd)); a != nil {
				go a.step()
			}
		}
	}
}

// stop ends the poller once no agent is parked any more (the drain has
// closed them all, and their steps have taken them out); agents that try
// to park afterwards wait on goroutines of their own.
func (p *idlePoller) stop() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	unix.Write(p.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.wake)
}

// park puts a, owned by the caller, in the set until its socket is
// readable or its connection closed. It reports false, leaving the caller
// the owner, when it cannot: no poller, a stopped one, or a connection
// that has closed (the caller's next read says so).
func (p *idlePoller) park(a *agentConn) bool {
	if p == nil || a.gate == nil {
		return false
	}
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return false
	}
	if a.pollID == 0 {
		p.next++
		if p.next == wakeID {
			p.next++
		}
		a.pollID = p.next
		unpark := func() {
			if p.take(a) {
				go a.step()
			}
		}
		a.gate.onClose.Store(&unpark)
	}
	op := unix.EPOLL_CTL_MOD
	if !a.polled {
		op, a.polled = unix.EPOLL_CTL_ADD, true
	}
	p.parked[a.pollID] = a // before the socket is armed, so that its event finds it
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(a.pollID)}
	p.mu.Unlock()
	// From here a belongs to whoever takes it out of parked. Control holds
	// the socket open, so its number cannot have gone to another
	// connection meanwhile.
	var err error
	cerr := a.gate.raw.Control(func(fd uintptr) { err = unix.EpollCtl(p.epfd, op, int(fd), &ev) })
	if cerr != nil || err != nil {
		return !p.take(a) // taken back: the caller owns it still; not: its close took it
	}
	return true
}

// take takes a out of parked, and reports whether it was there: the
// caller then owns it.
func (p *idlePoller) take(a *agentConn) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if a.pollID == 0 || p.parked[a.pollID] != a {
		return false
	}
	delete(p.parked, a.pollID)
	return true
}

func (p *idlePoller) takeID(id uint32) *agentConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.parked[id]
	delete(p.parked, id)
	return a
}
