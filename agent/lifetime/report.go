package lifetime

import (
	"context"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// The lifetime's status, for the server (over the agent's control
// connection) and for the state file.

// snapshot is the lifetime's state for the server and the state file.
func (l *Lifetime) snapshot() (wire.Status, stateSnapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked(), stateSnapshot{
		Sessions:  l.st.users,
		Logins:    l.st.logins,
		Expiry:    l.st.deadline().Round(0),
		HeldUntil: l.st.heldUntil().Round(0),
		Waiting:   l.st.jobDone,
		Failed:    !l.st.failed.IsZero(),
		Kept:      l.st.kept,
	}
}

func (l *Lifetime) statusLocked() wire.Status {
	// Whole seconds: input moves the deadline all the time, and nobody
	// needs the server told about every keystroke.
	return wire.Status{Expiry: l.st.deadline().Round(0).Truncate(time.Second), Sessions: l.st.users}
}

// Status is what the server is told about the lifetime now: the deadline
// in whole seconds (zero when there is none) and the logged-in users.
func (l *Lifetime) Status() wire.Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked()
}

// publish tells watchers (the control connection) and the state file
// about a changed status. Only the loop and the exit path call it.
func (l *Lifetime) publish() {
	st, snap := l.snapshot()
	l.mu.Lock()
	if st != l.status {
		l.status = st
		close(l.changed)
		l.changed = make(chan struct{})
	}
	l.mu.Unlock()
	if l.state != nil {
		l.state.update(snap)
	}
}

// watch returns the current status and a channel closed when it changes.
func (l *Lifetime) watch() (wire.Status, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked(), l.changed
}

// Report marks the agent registered in the state file, then sends the
// status with send now and whenever it changes (by enough: see
// statusGrain), from a goroutine of its own, until the returned stop is
// called or ctx ends. stop cancels and waits for that goroutine. A send
// error ends the reports: the connection it used is gone.
func (l *Lifetime) Report(ctx context.Context, send func(context.Context, wire.Status) error) (stop func()) {
	if l.state != nil {
		l.state.registered()
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last *wire.Status
		for {
			st, changed := l.watch()
			if last == nil || worthReporting(*last, st) {
				if err := send(ctx, st); err != nil {
					return
				}
				last = &st
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// statusGrain is how far the expiry must move before the server is told:
// while users type it moves all the time, and a page showing it does not
// need every second.
const statusGrain = 10 * time.Second

// worthReporting reports whether next differs enough from last, the
// status the server has.
func worthReporting(last, next wire.Status) bool {
	if last.Sessions != next.Sessions || last.Expiry.IsZero() != next.Expiry.IsZero() {
		return true
	}
	d := next.Expiry.Sub(last.Expiry)
	return d >= statusGrain || d <= -statusGrain
}
