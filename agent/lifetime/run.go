package lifetime

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

// HoldFile is the name of the hold file in the agent's directory: its
// mtime plus Config.Expiry keeps the agent up. A missing file holds
// nothing; a future mtime holds longer.
const HoldFile = ".hold"

// Lifetime runs the state machine (lifeState) against the clock, the
// SSH server's logins and input, and the files in the agent's directory.
// It tells open shells what is coming and decides when the agent ends.
// Its methods are safe for concurrent use; Start is called once.
type Lifetime struct {
	cfg   Config
	dir   string
	log   *slog.Logger
	state *StateFile // nil: no state file

	wake chan struct{} // logins and logouts wake the loop; buffered 1

	mu        sync.Mutex
	st        lifeState
	sessions  map[*liveSession]struct{}
	status    wire.Status   // last published
	changed   chan struct{} // closed and replaced when status changes
	closing   bool          // end has begun: no more sessions are attached
	finishMsg string        // what Finish tells open sessions

	handlers sync.WaitGroup // attached session handlers and their writers
}

// New prepares the lifetime of an agent whose directory is dir (where
// .hold is read). cfg must have passed Validate. With a nil state, no
// files are written and `agent wait` cannot follow the agent. Nothing
// runs before Start.
func New(cfg Config, dir string, log *slog.Logger, state *StateFile) *Lifetime {
	return &Lifetime{
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

func (l *Lifetime) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// login counts a logged-in connection until ctx (the connection's) ends.
func (l *Lifetime) login(ctx context.Context) {
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
func (l *Lifetime) activity() {
	l.mu.Lock()
	l.st.active = time.Now()
	l.mu.Unlock()
}

// Run is the running lifetime, from Start to End and Exit.
type Run struct {
	l         *Lifetime
	cancel    context.CancelFunc      // ends the agent's connection loop
	stopWatch context.CancelCauseFunc // ends the watcher early
	done      chan struct{}           // closed when the watcher has ended
	reason    endKind                 // why the lifetime ended; set by the watcher
	told      bool                    // sessions were told why they end
}

// errLoopEnded stops the watcher when the agent's connection loop ended
// by itself (the server refused the agent).
var errLoopEnded = errors.New("connection loop ended")

// Start begins the lifetime, at the start of the agent's run, and starts
// the goroutine that watches it (End stops and waits for it). The
// returned context is for the agent's connection loop, and the client
// streams it carries: it ends after ctx ends or the lifetime is over, and
// only after open sessions were told why (their streams must live until
// then). Call Start once.
func (l *Lifetime) Start(ctx context.Context) (context.Context, *Run) {
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
	r := &Run{l: l, cancel: cancel, stopWatch: stopWatch, done: make(chan struct{})}
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
func (l *Lifetime) loop(ctx context.Context) endKind {
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
		var jobDone, failed bool
		if l.state != nil {
			jobDone, failed = l.state.waitRequested()
		}
		now := time.Now()
		l.mu.Lock()
		l.st.hold = hold
		l.st.jobDone = l.st.jobDone || jobDone
		if failed && l.st.failed.IsZero() {
			l.st.failed = now
		}
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
func (l *Lifetime) shellsLocked() []*liveSession {
	var out []*liveSession
	for s := range l.sessions {
		if s.pty {
			out = append(out, s)
		}
	}
	return out
}

// readHold returns the mtime of .hold, or zero when there is none.
func (l *Lifetime) readHold() time.Time {
	st, err := os.Stat(filepath.Join(l.dir, HoldFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("cannot read the hold file", "error", err)
		}
		return time.Time{}
	}
	return st.ModTime()
}

// End finishes the lifetime after the agent's connection loop returned
// err, and returns what the agent's Run should return: err, or, when the
// lifetime ended because nobody logged in and err is nil, an error
// wrapping ErrNoLogin. Open sessions have then been told why they end (at
// most a few seconds' wait for their clients to hang up), and ended; the
// caller closes the SSH server next, then calls Exit.
func (r *Run) End(err error) error {
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
func (r *Run) tell(err error) {
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
	if r.reason == endDecided && err == nil {
		msg = l.finishMsg
	}
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

// Exit waits (at most 5 seconds) for attached session handlers to end
// after the SSH server closed their connections, records the outcome in
// the state file, and returns err unchanged. Call it once, after End.
func (r *Run) Exit(err error) error {
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
		l.state.exit(l.cfg.ExitStatus(err), reason, errors.Is(err, ErrNoLogin))
	}
	return err
}
