package lifetime

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// What the job's own commands (`converge extend`, `status`, and `agent
// run`'s retry, pass and fail) ask of the lifetime.

// Finish ends the lifetime now, whoever is connected and whatever holds
// it (the step was decided: `converge pass`, `fail`, `retry --now`).
// Open sessions are told msg, then closed. It does nothing before Start
// or after the end.
func (l *Lifetime) Finish(msg string) {
	l.mu.Lock()
	l.st.decided = true
	l.finishMsg = msg
	l.mu.Unlock()
	l.poke()
}

// FinishWhenUnused ends the lifetime once nobody is connected and
// neither .hold nor Extend holds it, whatever --stay says (the step was
// decided: a `converge retry` that passed). Until then it runs as before.
func (l *Lifetime) FinishWhenUnused() {
	l.mu.Lock()
	l.st.unused = true
	l.mu.Unlock()
	l.poke()
}

// Busy marks a step running for a user (`converge retry`): until the
// returned done is called, only the --max-session cap ends the lifetime,
// and no expiry warnings are shown. done counts as user input, so the
// idle expiry starts over from it. Call done once.
func (l *Lifetime) Busy() (done func()) {
	l.mu.Lock()
	l.st.busy++
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		l.st.busy--
		l.st.active = time.Now()
		l.mu.Unlock()
		l.poke()
	}
}

// Extend holds the agent up for d from now, as a .hold touched now with
// an --expiry of d would: the deadline moves to at least now+d (never past
// --max-session), and the last logout does not end the agent before then.
// An earlier extension or .hold that holds longer is kept. It returns the
// deadline and whether the --max-session cap is what bounds it.
func (l *Lifetime) Extend(d time.Duration) (deadline time.Time, capped bool, err error) {
	if d <= 0 {
		return time.Time{}, false, fmt.Errorf("extend by %v: give a positive duration such as 30m or 2h", d)
	}
	l.mu.Lock()
	if until := time.Now().Add(d); until.After(l.st.extended) {
		l.st.extended = until
	}
	deadline, capped = l.st.deadline(), l.st.capped()
	l.mu.Unlock()
	l.poke()
	return deadline, capped, nil
}

// Describe says, for people in the job, when the agent ends and what
// moves that: the deadline, a hold, the cap, a step running, and what
// happens at the last logout.
func (l *Lifetime) Describe() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return describe(&l.st, time.Now(), runtime.GOOS)
}

func describe(s *lifeState, now time.Time, goos string) string {
	var b strings.Builder
	switch d := s.deadline(); {
	case s.busy > 0:
		b.WriteString("A step is running: the agent waits for it (only --max-session ends it).\n")
	case d.IsZero():
		b.WriteString("No deadline: the agent runs until the job ends it.\n")
	case s.capped():
		fmt.Fprintf(&b, "Deadline: %s, the --max-session limit of %s (nothing extends it).\n", clock(d, now), human(s.cfg.MaxSession))
	case s.firstLogin.IsZero():
		fmt.Fprintf(&b, "Deadline: %s, unless someone logs in.\n", clock(d, now))
	default:
		fmt.Fprintf(&b, "Deadline: %s if nobody types (idle expiry %s).\n", clock(d, now), human(s.cfg.Expiry))
	}
	if h := s.heldUntil(); h.After(now) {
		fmt.Fprintf(&b, "Held (converge extend, or .hold) until %s.\n", clock(h, now))
	}
	fmt.Fprintf(&b, "Logged in: %d. Extend: converge extend 30m, or %s\n", s.users, holdCommandsFor(goos).touch)
	if s.kept > 0 {
		fmt.Fprintf(&b, "Shells kept running: %d (converge ls); attached or not, they keep the agent up until the deadline, never past it.\n", s.kept)
	}
	switch {
	case s.unused:
		b.WriteString("The step is decided: the agent exits once nobody is connected or holding it.\n")
	case s.cfg.ExitOnLastLogout:
		b.WriteString("At the last logout (unless held) the agent exits.\n")
	default:
		b.WriteString("After the last logout the agent runs until the deadline.\n")
	}
	return b.String()
}
