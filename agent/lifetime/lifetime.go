// Package lifetime decides how long a Converge agent runs, so that it
// never keeps a CI runner busy by accident: a deadline to the first login,
// an idle expiry extended by user input and by the mtime of .hold, a hard
// cap, and the end at the last logout. It tells open shells what is coming
// (a banner at login, warnings before the deadline, the reason at the end),
// keeps the state file that `agent wait` and `agent --detach` read, and
// maps how the agent ended to its exit status.
//
// It hooks into the agent's SSH server (gliderlabs/ssh) to see logins and
// input, but it is not the agent: it does not dial the server, serve
// streams or run sessions, and it never imports package agent. The agent
// creates a Lifetime with New, Hooks its SSH server, Attaches each session,
// Reports the status over its control connection, and brackets its run
// with Start, Run.End and Run.Exit.
package lifetime

import (
	"errors"
	"fmt"
	"time"
)

// Config bounds how long an agent runs. The zero value never ends the
// agent by itself (for embedding and tests); cmd/agent sets the defaults
// users get.
//
// The deadline is computed, never stored: before the first login it is
// the Start plus ConnectTimeout; after it, the last user input (or login,
// or logout) plus Expiry. The modification time of Dir/.hold plus Expiry
// extends either, so `touch .hold` extends and a future mtime extends
// further. MaxSession caps it all, .hold included.
type Config struct {
	// ConnectTimeout is the deadline to the first login, counted from
	// Start. Nobody logged in by then: Run.End returns ErrNoLogin.
	// Zero: wait forever.
	ConnectTimeout time.Duration
	// Expiry is the idle window while users are logged in: sessions end
	// Expiry after the last input from a user. It is also what a .hold
	// adds to its mtime. Zero: no idle expiry.
	Expiry time.Duration
	// WarnBefore is how long before the deadline warnings start in open
	// shells; at most half of Expiry is used. Zero: no warnings.
	WarnBefore time.Duration
	// MaxSession caps the time from the first login to the end, whatever
	// the input or .hold. Zero: no cap.
	MaxSession time.Duration
	// ExitOnLastLogout ends the agent when the last user logs out after
	// someone logged in, unless .hold holds it. False: keep running until
	// the deadline.
	ExitOnLastLogout bool
	// ConnectAfterFailure makes ConnectTimeout count from when the job
	// reports its failure (`agent wait --failed`) instead of from Start,
	// for an agent that runs in the background of the job (--detach):
	// until then the job's end (`agent wait`) bounds the agent, and at
	// most maxJobWait (6 hours). False: ConnectTimeout counts from Start, and
	// a failure reported before the first login restarts it.
	ConnectAfterFailure bool
	// NoLoginStatus is the exit status (ExitStatus) when nobody logged in
	// before ConnectTimeout, recorded in the state file too. Zero: 0, so
	// the job goes on as if the agent had not run.
	NoLoginStatus int
}

// Validate rejects negative durations.
func (l Config) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"connect timeout", l.ConnectTimeout}, {"expiry", l.Expiry}, {"warn-before", l.WarnBefore}, {"max session", l.MaxSession}} {
		if d.v < 0 {
			return fmt.Errorf("%s is negative (%v): give a positive duration such as 10m, or 0 to turn it off", d.name, d.v)
		}
	}
	if l.NoLoginStatus < 0 || l.NoLoginStatus > 125 {
		return fmt.Errorf("no-login status %d is out of range: give 0 (the job goes on) or a status from 1 to 125, such as 3", l.NoLoginStatus)
	}
	return nil
}

// warnBefore is WarnBefore, at most half of Expiry, so that a warning
// never follows every pause in typing.
func (l Config) warnBefore() time.Duration {
	if l.Expiry > 0 && l.WarnBefore > l.Expiry/2 {
		return l.Expiry / 2
	}
	return l.WarnBefore
}

// ErrNoLogin is what Run.End returns (wrapped) when nobody logged in
// before the connect timeout (or before a .hold given before any login ran
// out).
var ErrNoLogin = errors.New("nobody logged in")

// Exit statuses of the agent command, documented in the README.
const (
	// ExitOK: someone logged in and the session ended (last logout,
	// expiry, --max-session), `agent wait` found it unused, or the agent
	// was stopped by SIGINT/SIGTERM.
	ExitOK = 0
	// ExitFailed: the agent could not do its job (refused by the server,
	// bad configuration).
	ExitFailed = 1
	// ExitUsage: bad flags or arguments.
	ExitUsage = 2
	// ExitNotAdmitted: the relay's registration policy refused the
	// agent's credentials (or it had none): a setup error, not a network
	// failure, so the agent stops at once.
	ExitNotAdmitted = 4
)

// ErrNotAdmitted: the relay refused the agent's credentials.
var ErrNotAdmitted = errors.New("the relay does not admit this agent")

// ExitStatus maps what the agent's Run returned (Run.End's error, or one
// of its own) to the agent command's exit status: ExitOK for nil,
// NoLoginStatus for an error wrapping ErrNoLogin (nobody logged in before
// --connect-timeout), ExitNotAdmitted for one wrapping ErrNotAdmitted,
// ExitFailed for any other.
func (l Config) ExitStatus(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrNoLogin):
		return l.NoLoginStatus
	case errors.Is(err, ErrNotAdmitted):
		return ExitNotAdmitted
	}
	return ExitFailed
}

// endKind says why the lifetime ended.
type endKind int

const (
	endNone       endKind = iota
	endNoLogin            // deadline passed before anyone logged in
	endExpired            // deadline passed after a login (no input, .hold ran out)
	endMaxSession         // the MaxSession cap after the first login
	endLastLogout         // the last user logged out, not held
	endUnused             // `agent wait` asked, and nobody is connected or holding
	endDecided            // the job's step was decided from inside the job (agent run)
)

func (k endKind) String() string {
	return [...]string{"none", "no login", "expired", "max session", "last logout", "unused", "decided"}[k]
}

// lifeState is the lifetime's state machine. It holds no clock: every
// question takes the current time, so tests can ask about any instant.
type lifeState struct {
	cfg        Config
	start      time.Time // when Start was called
	firstLogin time.Time // zero until someone logs in
	users      int       // logged-in connections now
	kept       int       // kept shells running now, attached or not
	logins     int       // logins so far
	active     time.Time // last input, login or logout of a user
	hold       time.Time // mtime of .hold; zero when there is none
	jobDone    bool      // `agent wait` asked the agent to end when unused
	failed     time.Time // when `agent wait --failed` said the job failed; zero if not
	warned     time.Duration

	// Set through the job's own commands (decide.go).
	extended time.Time // Extend holds the agent up until then, as .hold does
	busy     int       // steps running for a user (converge retry): no end but the cap
	decided  bool      // Finish: end now
	unused   bool      // FinishWhenUnused: end once nobody is connected or holding
}

// deadline is when the agent ends if nothing happens; zero when never.
func (s *lifeState) deadline() time.Time {
	var d time.Time
	switch {
	case s.firstLogin.IsZero():
		d = s.loginBy()
	case s.cfg.Expiry > 0:
		d = s.active.Add(s.cfg.Expiry)
	}
	if h := s.heldUntil(); !d.IsZero() && h.After(d) {
		d = h
	}
	if c := s.hardCap(); !c.IsZero() && (d.IsZero() || c.Before(d)) {
		d = c
	}
	return d
}

// maxJobWait bounds how long an agent with ConnectAfterFailure waits for
// a first login while its job runs: the longest a GitHub-hosted job runs.
// A job that never runs `agent wait` (a forgotten one, on a runner that
// leaves background processes behind) does not keep the agent forever.
const maxJobWait = 6 * time.Hour

// loginBy is the deadline to the first login; zero when there is none.
// A failed job gives users ConnectTimeout from its failure.
func (s *lifeState) loginBy() time.Time {
	if s.cfg.ConnectTimeout <= 0 {
		return time.Time{}
	}
	f := s.failed.Add(s.cfg.ConnectTimeout)
	switch {
	case s.cfg.ConnectAfterFailure && !s.failed.IsZero():
		return f
	case s.cfg.ConnectAfterFailure:
		return s.start.Add(maxJobWait)
	}
	if d := s.start.Add(s.cfg.ConnectTimeout); s.failed.IsZero() || d.After(f) {
		return d
	}
	return f
}

// heldUntil is the end of the hold .hold or Extend gives; zero when
// there is none.
func (s *lifeState) heldUntil() time.Time {
	h := s.extended
	if !s.hold.IsZero() && s.hold.Add(s.cfg.Expiry).After(h) {
		h = s.hold.Add(s.cfg.Expiry)
	}
	return h
}

func (s *lifeState) held(now time.Time) bool {
	h := s.heldUntil()
	return !h.IsZero() && now.Before(h)
}

// hardCap is the MaxSession limit; zero when there is none (yet).
func (s *lifeState) hardCap() time.Time {
	if s.cfg.MaxSession <= 0 || s.firstLogin.IsZero() {
		return time.Time{}
	}
	return s.firstLogin.Add(s.cfg.MaxSession)
}

// capped reports whether the deadline is the hard cap, which neither input
// nor .hold can move.
func (s *lifeState) capped() bool {
	c := s.hardCap()
	return !c.IsZero() && c.Equal(s.deadline())
}

// end reports whether the agent must end at now, and why.
func (s *lifeState) end(now time.Time) endKind {
	if c := s.hardCap(); !c.IsZero() && !now.Before(c) {
		return endMaxSession
	}
	if s.decided {
		return endDecided
	}
	if s.busy > 0 {
		return endNone
	}
	if d := s.deadline(); !d.IsZero() && !now.Before(d) {
		if s.firstLogin.IsZero() {
			return endNoLogin
		}
		return endExpired
	}
	if s.users > 0 || s.held(now) {
		return endNone
	}
	if s.unused {
		return endDecided // a decided step does not wait for shells left running
	}
	if s.kept > 0 {
		// A kept shell holds the agent like a user who does not type:
		// until the idle expiry, never past it.
		return endNone
	}
	if !s.firstLogin.IsZero() && s.cfg.ExitOnLastLogout {
		return endLastLogout
	}
	if s.jobDone && s.firstLogin.IsZero() && !s.failed.IsZero() {
		return endNone // a failed job waits for its first login until loginBy
	}
	if s.jobDone && (s.firstLogin.IsZero() || s.cfg.ExitOnLastLogout) {
		return endUnused
	}
	return endNone
}

// minWarnGap is the shortest gap between two warnings.
func (s *lifeState) minWarnGap() time.Duration {
	return min(10*time.Second, s.cfg.warnBefore()/4)
}

// warning reports whether open shells should be warned at now, and how
// long is left. Warnings start WarnBefore ahead of the deadline and repeat
// each time the time left halves, down to minWarnGap. When the deadline
// moves out of the warning window (input, .hold), they start over.
func (s *lifeState) warning(now time.Time) (left time.Duration, due bool) {
	wb := s.cfg.warnBefore()
	d := s.deadline()
	if wb <= 0 || d.IsZero() || s.users == 0 || s.busy > 0 {
		return 0, false
	}
	left = d.Sub(now)
	if left > wb {
		s.warned = 0
		return left, false
	}
	if left <= 0 {
		return 0, false
	}
	if s.warned == 0 || (left <= s.warned/2 && s.warned/2 >= s.minWarnGap()) {
		s.warned = left
		return left, true
	}
	return left, false
}

// next is the next instant at which end or warning may change their
// answer without any event (login, logout, input, .hold); zero if none.
func (s *lifeState) next(now time.Time) time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	d := s.deadline()
	consider(d)
	consider(s.heldUntil())
	if wb := s.cfg.warnBefore(); wb > 0 && !d.IsZero() && s.users > 0 {
		if s.warned == 0 {
			consider(d.Add(-wb))
		} else if s.warned/2 >= s.minWarnGap() {
			consider(d.Add(-s.warned / 2))
		}
	}
	return next
}
