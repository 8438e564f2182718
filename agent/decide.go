package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/converge-ci/converge/agent/ctl"
	"github.com/converge-ci/converge/agent/journal"
)

// The decisions people in the job take about `agent run`'s step, through
// the job's `converge` command: retry, pass, fail; and extend and status,
// which any agent answers.

// Retry runs the step's command again, the same way, its output going to
// the job's log and to w. When it succeeds the step succeeds: the agent
// ends once nobody is connected (or at once, with now) and exits 0. When
// it fails, the agent waits again. It returns the command's exit status;
// the error is ErrDecided, ErrRetrying, or why the command could not run.
// by names who asked, for the job's log. ctx ending (the agent ends)
// stops the command.
func (b *Breakpoint) Retry(ctx context.Context, by string, w io.Writer, now bool) (int, error) {
	b.mu.Lock()
	switch {
	case b.passed || b.failed:
		b.mu.Unlock()
		return 0, ErrDecided
	case b.retrying:
		b.mu.Unlock()
		return 0, ErrRetrying
	}
	b.retrying = true
	b.retries.Add(1)
	b.mu.Unlock()
	defer b.retries.Done()

	fmt.Fprintf(b.out, "converge: %s runs %s again:\n", by, b.step.shown())
	busy := b.life.Busy()
	var side io.Writer
	if w != nil {
		side = &lockedWriter{w: w} // stdout and stderr are copied concurrently
	}
	code, err := b.step.runAgain(ctx, tee(b.out, side), tee(b.errOut, side))
	busy()

	b.mu.Lock()
	b.retrying = false
	first := b.status == notRun
	if code == 0 {
		b.passed = true
	} else if first {
		b.status = code
	}
	b.mu.Unlock()
	switch {
	case code == 0 && now:
		fmt.Fprintf(b.out, "converge: %s passed on a retry by %s; the step succeeds.\n", b.step.shown(), by)
		b.life.Finish(fmt.Sprintf("[converge] %s passed on a retry by %s: the step succeeds and the job goes on; closing your session.", b.step.shown(), by))
	case code == 0:
		fmt.Fprintf(b.out, "converge: %s passed on a retry by %s; the step succeeds once everyone has left.\n", b.step.shown(), by)
		b.life.FinishWhenUnused()
	default:
		fmt.Fprintf(b.out, "converge: the retry by %s failed with exit status %d; waiting again.\n", by, code)
	}
	return code, err
}

// Pass lets the step succeed without running the command again: the
// agent ends at once and exits 0, the job's log saying it was passed by
// hand, by whom.
func (b *Breakpoint) Pass(by string) error {
	if err := b.decide(true); err != nil {
		return err
	}
	fmt.Fprintf(b.out, "converge: passed by hand by %s: the step succeeds although %s failed.\n", by, b.step.shown())
	b.life.Finish(fmt.Sprintf("[converge] %s passed the step by hand: the job goes on; closing your session.", by))
	return nil
}

// Fail ends the step at once with the command's first failing status.
func (b *Breakpoint) Fail(by string) error {
	if err := b.decide(false); err != nil {
		return err
	}
	fmt.Fprintf(b.out, "converge: failed by hand by %s.\n", by)
	b.life.Finish(fmt.Sprintf("[converge] %s failed the step by hand: the job goes on with its failure; closing your session.", by))
	return nil
}

func (b *Breakpoint) decide(pass bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.passed || b.failed:
		return ErrDecided
	case b.retrying:
		return ErrRetrying
	}
	if pass {
		b.passed = true
	} else {
		b.failed = true
		if b.status == notRun {
			b.status = 1 // --break-before: it never ran, and it fails
		}
	}
	return nil
}

// Status is the command's first failing exit status; -1 before it ran.
func (b *Breakpoint) Status() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// Describe says where the step stands, for `converge status`.
func (b *Breakpoint) Describe() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.passed:
		return fmt.Sprintf("Step: %s passed; the agent exits 0 once everyone has left.\n", b.step.shown())
	case b.failed:
		return fmt.Sprintf("Step: %s failed by hand (exit status %d).\n", b.step.shown(), b.status)
	case b.retrying:
		return fmt.Sprintf("Step: %s is running again (converge retry).\n", b.step.shown())
	case b.status == notRun:
		return fmt.Sprintf("Step: %s has not run yet (--break-before). converge retry runs it; converge pass skips it.\n", b.step.shown())
	}
	return fmt.Sprintf("Step: %s failed with exit status %d, in %s.\n  converge retry | converge pass | converge fail\n", b.step.shown(), b.status, b.step.dir)
}

// Step is the agent's `agent run` step, nil for a plain agent.
func (a *Agent) Step() *Breakpoint { return a.step }

// Extend holds the agent up for d from now (`converge extend`); see
// lifetime.Lifetime.Extend.
func (a *Agent) Extend(d time.Duration) (deadline time.Time, capped bool, err error) {
	return a.life.Extend(d)
}

// Describe is `converge status`: the step, when there is one, and the
// lifetime.
func (a *Agent) Describe() string {
	s := a.life.Describe()
	if a.step != nil {
		s = a.step.Describe() + s
	}
	return s
}

// tee writes to main, and to side for as long as side takes it: a person
// who left must not stop the job's log.
func tee(main, side io.Writer) io.Writer {
	if side == nil {
		return main
	}
	return &teeWriter{main: main, side: side}
}

type teeWriter struct {
	main, side io.Writer
	sideErr    error
}

func (t *teeWriter) Write(p []byte) (int, error) {
	n, err := t.main.Write(p)
	if t.sideErr == nil {
		_, t.sideErr = t.side.Write(p)
	}
	return n, err
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// stepCommands are the converge command's rows for `agent run`'s step;
// none for a plain agent.
func (a *Agent) stepCommands() []ctl.Command {
	if a.step == nil {
		return nil
	}
	return []ctl.Command{
		{Name: "retry", Usage: "[--now]", Summary: "run the step's command again (output here and in the job's log); if it passes, so does the step, once everyone has left (--now: at once)", Run: a.cmdRetry, Stream: true},
		{Name: "pass", Summary: "let the step succeed without running its command again", Run: a.cmdPass},
		{Name: "fail", Summary: "end the step now, with its command's failing status", Run: a.cmdFail},
	}
}

func (a *Agent) cmdRetry(ctx context.Context, c *ctl.Call) error {
	now := false
	for _, arg := range c.Args {
		if arg != "--now" {
			c.Exit = 2
			return fmt.Errorf("unexpected %q: converge retry [--now]", arg)
		}
		now = true
	}
	by := a.caller(c.Caller)
	code, err := a.step.Retry(ctx, by, c.Stdout, now)
	if errors.Is(err, ErrDecided) || errors.Is(err, ErrRetrying) {
		return err
	}
	a.decided(c.Caller.Conn, "retry", by, code)
	if code == 0 {
		if now {
			fmt.Fprintln(c.Stdout, "converge: it passed: the step succeeds; the agent ends now.")
		} else {
			fmt.Fprintln(c.Stdout, "converge: it passed: the step succeeds once everyone has logged out.")
		}
		return err
	}
	fmt.Fprintf(c.Stderr, "converge: it failed with exit status %d; fix and retry, or converge pass / converge fail.\n", code)
	c.Exit = code
	return err
}

func (a *Agent) cmdPass(_ context.Context, c *ctl.Call) error {
	by := a.caller(c.Caller)
	if err := a.step.Pass(by); err != nil {
		return err
	}
	a.decided(c.Caller.Conn, "pass", by, 0)
	fmt.Fprintln(c.Stdout, "converge: passed by hand: the step succeeds and the job goes on; this session closes.")
	return nil
}

func (a *Agent) cmdFail(_ context.Context, c *ctl.Call) error {
	by := a.caller(c.Caller)
	if err := a.step.Fail(by); err != nil {
		return err
	}
	a.decided(c.Caller.Conn, "fail", by, a.step.Status())
	fmt.Fprintln(c.Stdout, "converge: failed by hand: the step fails and the job goes on; this session closes.")
	return nil
}

func (a *Agent) cmdExtend(_ context.Context, c *ctl.Call) error {
	if len(c.Args) != 1 {
		c.Exit = 2
		return errors.New("give a duration: converge extend 30m")
	}
	d, err := time.ParseDuration(c.Args[0])
	if err != nil {
		c.Exit = 2
		return fmt.Errorf("%q is no duration: give one such as 30m or 2h", c.Args[0])
	}
	deadline, capped, err := a.Extend(d)
	if err != nil {
		return err
	}
	by := a.caller(c.Caller)
	a.journal.Append(journal.Entry{Kind: journal.KindExtend, Conn: c.Caller.Conn, Note: fmt.Sprintf("%s extended by %v", by, d)})
	fmt.Fprintf(c.Stdout, "converge: held until at least %s UTC (in %s).\n", deadline.UTC().Format("15:04:05"), time.Until(deadline).Round(time.Second))
	if capped {
		fmt.Fprintln(c.Stdout, "converge: that is the --max-session limit, which nothing extends.")
	}
	return nil
}

// caller names the person behind a converge command's session, as the
// journal knows them.
func (a *Agent) caller(c ctl.Caller) string {
	for _, p := range journal.People(a.journal.Entries()) {
		if p.Conn == c.Conn && p.Until.IsZero() {
			return p.Login.Name()
		}
	}
	return "someone in the job"
}

// decided records in the journal a decision about the step, taken in
// the session of connection conn.
func (a *Agent) decided(conn, decision, by string, status int) {
	data, _ := json.Marshal(struct {
		Decision string `json:"decision"`
		By       string `json:"by"`
		Status   int    `json:"status"`
		Command  string `json:"command"`
	}{decision, by, status, a.step.step.line})
	a.journal.Append(journal.Entry{Kind: journal.KindRunDecision, Conn: conn, Note: fmt.Sprintf("%s: %s by %s (status %d)", a.step.step.line, decision, by, status), Data: data})
}
