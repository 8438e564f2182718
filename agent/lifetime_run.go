package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// holdPoll is how often the agent looks at .hold and at `agent wait`'s
// request. Touching .hold takes effect within it.
const holdPoll = time.Second

// HoldFile is the name of the hold file in the agent's directory.
const HoldFile = ".hold"

// lifetime runs the state machine of lifeState against the clock, the
// SSH server's logins and input, and the files in the agent's directory.
// It tells open shells what is coming and decides when Run ends.
type lifetime struct {
	cfg   Lifetime
	dir   string
	log   *slog.Logger
	state *stateFile // nil: no state file

	wake chan struct{} // logins and logouts wake the loop; buffered 1

	mu       sync.Mutex
	st       lifeState
	sessions map[*liveSession]struct{}
	status   wire.Status   // last published
	changed  chan struct{} // closed and replaced when status changes
	closing  bool          // end has begun: no more sessions are attached

	handlers sync.WaitGroup // attached session handlers and their writers
}

func newLifetime(cfg Lifetime, dir string, log *slog.Logger, state *stateFile) *lifetime {
	return &lifetime{
		cfg:      cfg,
		dir:      dir,
		log:      log,
		state:    state,
		wake:     make(chan struct{}, 1),
		st:       lifeState{cfg: cfg},
		sessions: make(map[*liveSession]struct{}),
		changed:  make(chan struct{}),
	}
}

func (l *lifetime) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// login counts a logged-in connection until ctx (the connection's) ends.
func (l *lifetime) login(ctx context.Context) {
	l.mu.Lock()
	now := time.Now()
	if l.st.firstLogin.IsZero() {
		l.st.firstLogin = now
	}
	l.st.users++
	l.st.logins++
	l.st.active = now
	l.mu.Unlock()
	l.poke()
	context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.st.users--
		l.st.active = time.Now()
		l.mu.Unlock()
		l.poke()
	})
}

// activity records input from a user. It is called for every read from
// a user's channel, so it only takes the lock.
func (l *lifetime) activity() {
	l.mu.Lock()
	l.st.active = time.Now()
	l.mu.Unlock()
}

// lifeRun is one Run of the lifetime, from start to exit.
type lifeRun struct {
	l         *lifetime
	cancel    context.CancelFunc      // ends Run's connection loop
	stopWatch context.CancelCauseFunc // ends the watcher early
	done      chan struct{}           // closed when the watcher has ended
	reason    endKind                 // why the lifetime ended; set by the watcher
	told      bool                    // sessions were told why they end
}

// errLoopEnded stops the watcher when Run's connection loop ended by
// itself (the server refused the agent).
var errLoopEnded = errors.New("connection loop ended")

// start begins the lifetime at the start of Run. The returned context is
// for Run's connection loop, and the client streams it carries: it ends
// after ctx ends or the lifetime is over, and after open sessions were
// told why (their streams must live until then).
func (l *lifetime) start(ctx context.Context) (context.Context, *lifeRun) {
	l.mu.Lock()
	l.st.start = time.Now()
	deadline := l.st.deadline()
	l.mu.Unlock()
	if l.state != nil {
		l.state.begin()
	}
	loginBy, lastLogout := "never", "stay"
	if !deadline.IsZero() {
		loginBy = deadline.UTC().Format(time.TimeOnly + " UTC")
	}
	if l.cfg.ExitOnLastLogout {
		lastLogout = "exit 0"
	}
	l.log.Info("lifetime: the agent ends if nobody logs in in time, after --expiry without input, or at the last logout",
		"login_by", loginBy, "expiry", l.cfg.Expiry, "max_session", l.cfg.MaxSession, "last_logout", lastLogout)
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	watchCtx, stopWatch := context.WithCancelCause(ctx)
	r := &lifeRun{l: l, cancel: cancel, stopWatch: stopWatch, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.reason = l.loop(watchCtx)
		if r.reason != endNone || !errors.Is(context.Cause(watchCtx), errLoopEnded) {
			r.tell(nil)
			cancel()
		}
	}()
	return loopCtx, r
}

// loop runs until the lifetime ends (returning why) or ctx ends (endNone).
func (l *lifetime) loop(ctx context.Context) endKind {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return endNone
		case <-t.C:
		case <-l.wake:
		}
		hold := l.readHold()
		jobDone := l.state != nil && l.state.waitRequested()
		now := time.Now()
		l.mu.Lock()
		l.st.hold = hold
		l.st.jobDone = l.st.jobDone || jobDone
		k := l.st.end(now)
		left, warn := l.st.warning(now)
		next := l.st.next(now)
		var shells []*liveSession
		var text string
		if warn && k == endNone {
			shells = l.shellsLocked()
			text = l.warningLocked(now, left)
		}
		l.mu.Unlock()
		l.publish()
		if k != endNone {
			l.log.Info("lifetime over", "reason", k.String())
			return k
		}
		if len(shells) > 0 {
			for _, s := range shells {
				s.say(text, false)
			}
		}
		wait := holdPoll
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(now), 0))
		}
		t.Reset(wait)
	}
}

// shellsLocked lists the open interactive sessions.
func (l *lifetime) shellsLocked() []*liveSession {
	var out []*liveSession
	for s := range l.sessions {
		if s.pty {
			out = append(out, s)
		}
	}
	return out
}

// readHold returns the mtime of .hold, or zero when there is none.
func (l *lifetime) readHold() time.Time {
	st, err := os.Stat(filepath.Join(l.dir, HoldFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("cannot read the hold file", "error", err)
		}
		return time.Time{}
	}
	return st.ModTime()
}

// snapshot is the lifetime's state for the server and the state file.
func (l *lifetime) snapshot() (wire.Status, stateSnapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked(), stateSnapshot{
		Sessions:  l.st.users,
		Logins:    l.st.logins,
		Expiry:    l.st.deadline().Round(0),
		HeldUntil: l.st.heldUntil().Round(0),
		Waiting:   l.st.jobDone,
	}
}

func (l *lifetime) statusLocked() wire.Status {
	// Whole seconds: input moves the deadline all the time, and nobody
	// needs the server told about every keystroke.
	return wire.Status{Expiry: l.st.deadline().Round(0).Truncate(time.Second), Sessions: l.st.users}
}

// Status is what the server is told about the lifetime.
func (l *lifetime) Status() wire.Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked()
}

// publish tells watchers (the control connection) and the state file
// about a changed status. Only the loop and the exit path call it.
func (l *lifetime) publish() {
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
func (l *lifetime) watch() (wire.Status, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked(), l.changed
}

// report sends the status with send now and whenever it changes, until
// the returned stop is called (stop waits for the sender to end). A send
// error ends the reports: the connection it used is gone.
func (l *lifetime) report(ctx context.Context, send func(context.Context, wire.Status) error) (stop func()) {
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

// end finishes the lifetime after Run's connection loop returned err and
// returns what Run returns. Open sessions have been told why they end,
// and ended; the caller then closes the SSH server.
func (r *lifeRun) end(err error) error {
	r.stopWatch(errLoopEnded)
	<-r.done
	if !r.told {
		r.tell(err)
	}
	r.cancel()
	if r.reason == endNoLogin && err == nil {
		err = fmt.Errorf("%w within %v (--connect-timeout)", ErrNoLogin, r.l.cfg.ConnectTimeout)
	}
	return err
}

// tell writes into every open session why it ends, ends it, and waits a
// moment for the words to be delivered and the clients to hang up.
func (r *lifeRun) tell(err error) {
	r.told = true
	l := r.l
	var msg string
	switch {
	case err != nil:
		msg = "the agent failed (" + err.Error() + "); closing your session."
	case r.reason == endNone:
		msg = "the agent was stopped (the CI job is ending or was cancelled); closing your session."
	case r.reason == endExpired:
		msg = fmt.Sprintf("no input for %v and no .hold: the session expired; closing.", human(l.cfg.Expiry))
	case r.reason == endMaxSession:
		msg = fmt.Sprintf("the session reached its limit of %v (--max-session); closing.", human(l.cfg.MaxSession))
	}
	l.mu.Lock()
	l.closing = true
	open := make([]*liveSession, 0, len(l.sessions))
	for s := range l.sessions {
		open = append(open, s)
	}
	l.mu.Unlock()
	if msg == "" || len(open) == 0 {
		return
	}
	for _, s := range open {
		s.say("[converge] "+msg, true)
	}
	// Wait until the words are out and the clients have hung up
	// themselves: closing their connections first would make ssh fail
	// with "Broken pipe" rather than exit cleanly.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, s := range open {
			s.waitSaid()
		}
		for _, s := range open {
			select {
			case <-s.s.Context().Done():
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		l.log.Warn("some users did not take the closing message in time")
	}
}

// exit waits (bounded) for session handlers to end after the SSH server
// closed their connections, and records the outcome in the state file.
func (r *lifeRun) exit(err error) error {
	l := r.l
	done := make(chan struct{})
	go func() { l.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		l.log.Warn("session handlers did not end in time")
	}
	l.publish()
	if l.state != nil {
		reason := r.reason.reason()
		if err != nil && r.reason == endNone {
			reason = err.Error()
		}
		l.state.exit(ExitStatus(err), reason)
	}
	return err
}
