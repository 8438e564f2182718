package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/internal/cli"
)

// runMain is `agent run [flags] URL -- CMD [ARGS...]`, with the agent's
// command and options (cmd, o) and the job's environment as it was
// (env). It exits with the status agent.RunStep decides.
func runMain(cmd *cli.Command, o *options, args, env []string) {
	cmd.Name = "agent run"
	cmd.Usage = "agent run [flags] ws[s]://host[:port] -- CMD [ARGS...]"
	cmd.Summary = `
Run CMD, a step of the CI job, with the job's stdin, stdout, stderr,
environment and working directory (--dir). When it succeeds, exit 0 at
once: no connection is made, nothing else happens.

When it fails (a non-zero status, or a signal: 128+signal), register with
the Converge server as the agent does, print how to connect and which
command failed, and wait. Shells start in CMD's directory with its
environment and CMD in their history. From a shell there:
  converge retry    run CMD again (output to the job's log too); when it
                    succeeds the step does, once everyone has left (--now: at once)
  converge pass     the step succeeds without running CMD again
  converge fail     the step fails with CMD's status
  converge extend 30m, converge status
If nobody connects within --connect-timeout, or the session ends without a
decision, exit with CMD's status. Every agent flag applies.`
	cmd.Footer = `Exit status: CMD's when it succeeds or nobody passes it; 0 when passed
by hand or by a retry; 2 on bad usage.

Examples:
  agent run --id "job-$CI_JOB_ID" wss://converge.example.com -- make test
  agent run --break-before wss://converge.example.com -- ./deploy.sh`
	f := cmd.Flags
	breakBefore := f.Bool("break-before", false, "register and wait before running CMD; converge retry runs it the first time, and it runs anyway if nobody decides")
	if err := cmd.Parse(args); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(lifetime.ExitUsage)
	}
	server, command, err := splitRunArgs(f.Args())
	if err != nil {
		cli.Fatal("agent run", err, lifetime.ExitUsage)
	}
	if o.detach {
		cli.Fatal("agent run", errors.New("--detach does not apply: agent run waits for CMD"), lifetime.ExitUsage)
	}
	o.cfg.Server = server
	// Flag twins of the environment are read before CMD runs and passed on
	// to it unchanged: CMD gets the job's environment.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code, err := agent.RunStep(ctx, agent.StepConfig{Agent: o.config(), Command: command, Env: env, Signals: sigs, BreakBefore: *breakBefore})
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent run: %v\n", err)
	}
	os.Exit(code)
}

// splitRunArgs splits what follows agent run's flags: the server URL,
// an optional "--", and the command.
func splitRunArgs(args []string) (server string, command []string, err error) {
	if len(args) == 0 || !strings.Contains(args[0], "://") {
		return "", nil, errors.New("missing server URL before the command: agent run [flags] wss://converge.example.com -- CMD [ARGS...]")
	}
	server, command = args[0], args[1:]
	if len(command) > 0 && command[0] == "--" {
		command = command[1:]
	}
	if len(command) == 0 {
		return "", nil, errors.New("missing the command to run after the server URL: agent run [flags] URL -- CMD [ARGS...]")
	}
	return server, command, nil
}
