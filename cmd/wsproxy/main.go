// Command wsproxy connects stdin and stdout to a Converge client
// WebSocket; it is meant as an ssh ProxyCommand.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/wsproxy"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "config-ssh" {
		configSSH(os.Args[2:])
		return
	}
	cmd, f := newCommand()
	if err := cmd.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	if cmd.Flags.NArg() != 1 {
		cli.Fatal("wsproxy", errors.New("give exactly one URL, ws[s]://host[:port]/client/ID; see wsproxy --help"), 2)
	}
	target, err := wsproxy.ParseTarget(wsproxy.TrimHostSuffix(cmd.Flags.Arg(0), f.hostSuffix))
	if err != nil {
		cli.Fatal("wsproxy", err, 1)
	}
	run(target, f)
}

// flags is what the command line sets.
type flags struct {
	opts       wsproxy.Options
	verbose    bool
	sessions   string
	hostSuffix string
}

func newCommand() (*cli.Command, *flags) {
	cmd := cli.New("wsproxy", "wsproxy [flags] ws[s]://host[:port]/client/ID", `
wsproxy connects its standard input and output to a WebSocket, so that ssh,
sftp, scp, git and IDEs reach a Converge agent through the server. Use it as
the ssh ProxyCommand; the SSH session itself runs end to end between your
ssh client and the agent.`)
	cmd.Footer = `Examples:
  ssh  -oProxyCommand="wsproxy wss://converge.example.com/client/myjob" -oHostKeyAlias=myjob converge@localhost
  sftp -oProxyCommand="wsproxy wss://converge.example.com/client/myjob" -oHostKeyAlias=myjob converge@localhost
  wsproxy config-ssh --server wss://converge.example.com   (then: ssh myjob.converge.example.com; see wsproxy config-ssh --help)`
	f := &flags{}
	cmd.Flags.BoolVar(&f.opts.NoResume, "no-resume", false, "ask for a plain stream: a dropped connection then ends the session (default: resumable when the agent offers it)")
	cmd.Flags.DurationVar(&f.opts.ResumeWindow, "resume-window", 2*time.Minute, "how long to keep reconnecting after the connection drops before giving the session up")
	cmd.Flags.StringVar(&f.sessions, "tls-sessions", wsproxy.DefaultSessionFile(), "file (0600) keeping wss:// servers' TLS session tickets, so the next run resumes a session instead of a full handshake; empty: keep none")
	cmd.Flags.StringVar(&f.hostSuffix, "host-suffix", "", "strip this suffix from the URL's ID (config-ssh's ProxyCommand passes the name typed, ID.SUFFIX)")
	cmd.Flags.BoolVar(&f.verbose, "verbose", false, "log reconnects and other details to stderr (ssh shows them in your terminal)")
	return cmd, f
}

// run pipes stdio to target until the stream ends, then exits.
func run(target wsproxy.Target, f *flags) {
	opts := f.opts
	if f.sessions != "" {
		opts.TLSSessions = wsproxy.NewSessionFile(f.sessions)
	}
	if target.PlainText() {
		fmt.Fprintln(os.Stderr, "wsproxy: warning: plain ws:// to another machine: anyone on the path can watch and cut this connection (SSH inside stays encrypted); use wss://")
	}
	// SIGHUP (the ssh client's terminal went away) ends the stream
	// gracefully, so the agent closes the session now rather than waiting
	// the resume window for a client that will not come back.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// When ssh has gone, a write to its stdout pipe must fail with EPIPE
	// rather than kill us with SIGPIPE (Go's default for fd 1): the
	// resumable stream still has to tell the agent it ended, or the agent
	// keeps the session (and its forwards) for the resume window.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	// Quiet by default: ssh copies our stderr into the user's terminal.
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelDebug
	}
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// One stream needs one core. With more, the runtime hands each wake-up
	// (a frame arrived, stdout has room) to another thread, which costs more
	// than the work it wakes (docs/design.md, "What the relay costs").
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	// Once ssh is done with us, a resumable stream still lingers to tell
	// the agent; report now and let go of the stderr ssh gave us, or a
	// program capturing ssh's stderr waits for the farewell too.
	released := false
	opts.Released = func(err error) {
		released = true
		if err != nil {
			fmt.Fprintf(os.Stderr, "wsproxy: %v\n", err)
		}
		wsproxy.ReleaseStderr()
	}
	// What the relay verified about the job, once, before ssh starts:
	// ssh passes our stderr to the user's terminal.
	opts.Verified = func(job string) {
		fmt.Fprintf(os.Stderr, "converge: %s is %s (verified by the relay; the host key ssh checks is the end-to-end proof)\n", target.ID(), job)
	}
	in, out := wsproxy.OpenStdio()
	if err := wsproxy.Stdio(ctx, target, in, out, opts); err != nil {
		if released {
			os.Exit(1) // reported
		}
		cli.Fatal("wsproxy", err, 1)
	}
}
