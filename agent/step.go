package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The command `agent run` wraps, and how it is run: the same program,
// arguments, working directory and environment each time.

// stepGrace is how long a retried command has, after it was asked to
// stop (the agent is ending), before it is killed.
const stepGrace = 5 * time.Second

// Exit statuses of a command that could not start, as shells report them.
const (
	statusNotFound  = 127 // no such program
	statusCannotRun = 126 // found, but it would not start (permissions, format)
)

// step is the command `agent run` runs.
type step struct {
	args []string // program and arguments
	dir  string   // working directory
	env  []string // environment, KEY=value
	line string   // args as a command line, for people and shell history
}

func newStep(args []string, dir string, env []string) *step {
	return &step{args: args, dir: dir, env: env, line: commandLine(args)}
}

// cmdExeLine is the Windows command line for args when they run cmd.exe
// with /c or /k: what follows is handed to cmd.exe as written, joined by
// spaces, since cmd.exe does not parse the quoting Go gives arguments
// (CommandLineToArgvW's). escape quotes the program's path. ok is false
// for any other program, whose arguments Go quotes as usual.
func cmdExeLine(args []string, escape func(string) string) (line string, ok bool) {
	if len(args) < 3 {
		return "", false
	}
	base := strings.ToLower(filepath.Base(strings.ReplaceAll(args[0], `\`, "/")))
	flag := strings.ToLower(args[1])
	if (base != "cmd" && base != "cmd.exe") || (flag != "/c" && flag != "/k") {
		return "", false
	}
	return escape(args[0]) + " " + args[1] + " " + strings.Join(args[2:], " "), true
}

// shown is the command line in backquotes, for messages.
func (s *step) shown() string { return "`" + s.line + "`" }

// command builds one run of the step.
func (s *step) command(ctx context.Context) *exec.Cmd {
	cmd := exec.CommandContext(ctx, s.args[0], s.args[1:]...)
	cmd.Dir, cmd.Env = s.dir, s.env
	prepareStep(cmd)
	return cmd
}

// runFirst runs the step in the foreground, as the job ran `agent run`:
// with the job's stdin, stdout and stderr handed over as they are (no
// copies), in the agent's own process group, so a terminal's Ctrl-C
// reaches it as it would without the agent. Signals arriving on sigs are
// passed on to it. It returns the exit status (see exitStatus).
func (s *step) runFirst(stdin io.Reader, stdout, stderr io.Writer, sigs <-chan os.Signal) (int, error) {
	cmd := s.command(context.Background())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := cmd.Start(); err != nil {
		return startStatus(err), err
	}
	done := make(chan struct{})
	var forwarding sync.WaitGroup
	forwarding.Add(1)
	go func() {
		defer forwarding.Done()
		for {
			select {
			case sig := <-sigs:
				forwardSignal(cmd.Process, sig)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	forwarding.Wait()
	return exitStatus(cmd, err)
}

// runAgain runs the step for `converge retry`: stdin empty (the job's was
// the first run's), its output to stdout and stderr, in a process group
// of its own that is asked to stop (then killed after stepGrace) when ctx
// ends.
func (s *step) runAgain(ctx context.Context, stdout, stderr io.Writer) (int, error) {
	cmd := s.command(ctx)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	ownGroup(cmd)
	cmd.WaitDelay = stepGrace
	if err := cmd.Start(); err != nil {
		return startStatus(err), err
	}
	return exitStatus(cmd, cmd.Wait())
}

// startStatus is the exit status of a command that did not start.
func startStatus(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		return statusNotFound
	}
	return statusCannotRun
}

// exitStatus is the status the step ended with, given what cmd.Wait
// returned: its exit code, or 128 plus the signal that killed it (Unix
// shells' convention). An error is returned only when there is no status
// to report (a copy of its output failed).
func exitStatus(cmd *exec.Cmd, err error) (int, error) {
	ps := cmd.ProcessState
	if ps == nil {
		return statusCannotRun, err
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		return processStatus(ps), fmt.Errorf("run %s: %w", cmd.Path, err)
	}
	return processStatus(ps), nil
}

// commandLine shows args as one command line: the script itself for a
// shell's -c, after any other options (sh -c 'make test' and bash -eo
// pipefail -c 'make test' are "make test"; PowerShell's -Command and
// cmd's /c too), else each argument quoted for a POSIX shell where it
// needs to be.
func commandLine(args []string) string {
	if script, ok := shellScript(args); ok {
		return script
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// shellScript returns the script args hand a shell, if they are a shell,
// options, its flag for a script, and the script.
func shellScript(args []string) (string, bool) {
	n := len(args)
	if n < 3 {
		return "", false
	}
	for i, a := range args[1 : n-2] {
		prev := args[i] // an option taking a name: -o pipefail, -eo pipefail, -O extglob
		named := strings.HasPrefix(prev, "-") && (strings.HasSuffix(prev, "o") || strings.HasSuffix(prev, "O"))
		if !strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "/") && !named {
			return "", false
		}
	}
	shell, flag := strings.TrimSuffix(strings.ToLower(filepath.Base(args[0])), ".exe"), strings.ToLower(args[n-2])
	switch {
	case flag == "-c" && strings.Contains(" sh bash dash zsh ksh ", " "+shell+" "),
		(flag == "-command" || flag == "-c") && (shell == "pwsh" || shell == "powershell"),
		flag == "/c" && shell == "cmd":
		return args[n-1], true
	}
	return "", false
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
