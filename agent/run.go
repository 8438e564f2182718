package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/agent/statedir"
)

// `agent run -- CMD`: run the job's command; only when it fails, start
// the agent and let the person who connects decide what the step does
// (see Breakpoint).

// StepConfig is `agent run`: the command, and the agent that starts when
// it fails.
type StepConfig struct {
	// Agent is the agent started when the command fails (or before it
	// runs, with BreakBefore). Its Dir is the command's working
	// directory too. Nothing of it is used, no key fetched, no
	// connection made, while the command succeeds.
	Agent Config
	// Command is the program and its arguments. Required.
	Command []string
	// Env is the command's environment (KEY=value), the same for every
	// run. Nil: the agent's own.
	Env []string
	// Stdin, Stdout and Stderr are the command's on its first run; Stdout
	// and Stderr are the job's log, where retries' output goes too, and
	// what the agent says about the step. Nil: the agent's own.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Signals are passed on to the command while it runs in the
	// foreground (the job's cancellation). Nil: none are.
	Signals <-chan os.Signal
	// BreakBefore starts the agent before the command runs; `converge
	// retry` then runs it for the first time. False: run it first.
	BreakBefore bool
	// TempDir is where a private folder for the shell history is made.
	// Empty: $RUNNER_TEMP when set, else the system's.
	TempDir string
}

func (c *StepConfig) fill() error {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return errors.New("no command given: agent run [flags] URL -- CMD [ARGS...]")
	}
	if c.Env == nil {
		c.Env = os.Environ()
	}
	if c.Stdin == nil {
		c.Stdin = os.Stdin
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.TempDir == "" {
		c.TempDir = os.Getenv("RUNNER_TEMP")
	}
	if c.Agent.Out == nil {
		c.Agent.Out = c.Stdout
	}
	return c.Agent.Validate()
}

// RunStep is `agent run`. It runs the command and returns its exit status
// when it succeeds, having touched nothing else. When it fails (or
// before it runs, with BreakBefore) it starts the agent and waits for
// someone to connect and decide: `converge retry`, `pass` or `fail`
// (Breakpoint). It returns the status the step ends with: 0 when passed
// (by hand, or a retry that succeeded), else the command's first failing
// status, whatever ended the wait (nobody connected, the lifetime, the
// agent failing, the job stopping). The error, when not nil, says why the
// agent could not do its part; the status stands regardless.
func RunStep(ctx context.Context, cfg StepConfig) (int, error) {
	if err := cfg.fill(); err != nil {
		return lifetime.ExitUsage, err
	}
	b := &Breakpoint{step: newStep(cfg.Command, cfg.Agent.Dir, cfg.Env), out: cfg.Stdout, errOut: cfg.Stderr, status: notRun}
	if cfg.BreakBefore {
		fmt.Fprintf(b.out, "converge: stopping before %s (--break-before): connect, look around, then `converge retry` runs it.\n", b.step.shown())
	} else {
		code, err := b.step.runFirst(cfg.Stdin, cfg.Stdout, cfg.Stderr, cfg.Signals)
		if err != nil {
			fmt.Fprintf(b.errOut, "converge: %v\n", err)
		}
		if code == 0 || ctx.Err() != nil {
			return code, nil // passed, or the job is stopping: no time for a shell
		}
		b.status = code
		fmt.Fprintf(b.out, "converge: %s failed with exit status %d, in %s. Connect to look at it, fix it, then decide in a shell there:\n"+
			"  converge retry (run it again)   converge pass   converge fail   converge extend 30m   converge status\n", b.step.shown(), code, b.step.dir)
	}
	err := b.wait(ctx, cfg)
	code := b.exit(ctx, cfg, err)
	if errors.Is(err, lifetime.ErrNoLogin) {
		err = nil // no failure of the agent's: exit says so
	}
	return code, err
}

// wait starts the agent and runs it until it ends.
func (b *Breakpoint) wait(ctx context.Context, cfg StepConfig) error {
	acfg := cfg.Agent
	hist, cleanup, err := writeHistory(cfg.TempDir, b.step.line)
	if err != nil {
		acfg.Logger.Warn("no shell history with the failed command", "error", err)
	} else {
		defer cleanup()
		acfg.SessionEnv = append(append([]string{}, acfg.SessionEnv...), "HISTFILE="+hist)
	}
	if acfg.StateDir == "" {
		// Where the agent keeps its journal (the decisions included) after it ends.
		acfg.StateDir = statedir.Choose("", acfg.ID, acfg.Dir, os.Getenv)
	}
	acfg.step = b
	a, err := New(acfg)
	if err != nil {
		return err
	}
	err = a.Run(ctx) // its converge command stops retries as it ends
	b.retries.Wait()
	return err
}

// exit is the status the step ends with once the agent has ended (err:
// what its Run returned).
func (b *Breakpoint) exit(ctx context.Context, cfg StepConfig, err error) int {
	b.mu.Lock()
	passed, status := b.passed, b.status
	b.mu.Unlock()
	switch {
	case passed:
		return 0
	case status == notRun && ctx.Err() == nil:
		fmt.Fprintf(b.out, "converge: nobody decided; running %s now.\n", b.step.shown())
		code, err := b.step.runFirst(cfg.Stdin, cfg.Stdout, cfg.Stderr, cfg.Signals)
		if err != nil {
			fmt.Fprintf(b.errOut, "converge: %v\n", err)
		}
		return code
	case status == notRun:
		fmt.Fprintf(b.out, "converge: the job is stopping; %s did not run.\n", b.step.shown())
		return lifetime.ExitFailed
	}
	why := "nobody decided"
	switch {
	case b.failed:
		why = "failed by hand"
	case errors.Is(err, lifetime.ErrNoLogin):
		why = "nobody connected in time"
	case err != nil:
		why = "the agent failed"
	case ctx.Err() != nil:
		why = "the job is stopping"
	}
	fmt.Fprintf(b.out, "converge: %s; the step ends with %s's exit status %d.\n", why, b.step.shown(), status)
	return status
}

// writeHistory makes a private folder in base (or the system's temporary
// one) holding a shell history file whose one entry is line, and returns
// the file's path and how to remove the folder.
func writeHistory(base, line string) (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp(base, "converge-run-")
	if err != nil {
		return "", nil, fmt.Errorf("make a folder for the shell history: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	path = filepath.Join(dir, "history")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("write the shell history: %w", err)
	}
	return path, cleanup, nil
}

// notRun is Breakpoint.status before the command ran (--break-before).
const notRun = -1

// Breakpoint is the step `agent run` stopped at: the command, its first
// failing status, and what the people in the job decided. The job's own
// `converge` command calls its methods.
type Breakpoint struct {
	// Set at construction.
	step        *step
	out, errOut io.Writer // the job's log

	// Set by wait before the agent serves anyone.
	life    *lifetime.Lifetime
	retries sync.WaitGroup

	mu       sync.Mutex
	status   int  // the first failing exit status; notRun before the command ran
	passed   bool // the step succeeds (pass, or a retry that passed)
	failed   bool // `converge fail`
	retrying bool // a retry runs
}

// Errors of the decisions.
var (
	ErrDecided  = errors.New("the step is already decided; the agent ends once everyone has left")
	ErrRetrying = errors.New("a retry is running; wait for it to end")
	ErrNoStep   = errors.New("this agent was not started by `agent run`: there is no step to decide")
)
