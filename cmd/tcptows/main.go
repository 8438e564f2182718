// Command tcptows forwards a local TCP port to a Converge client WebSocket.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/wsproxy"
)

func main() {
	cmd := cli.New("tcptows", "tcptows [flags] PORT ws[s]://host[:port]/client/ID", `
tcptows listens on a local TCP port and relays every accepted connection
through its own WebSocket to a Converge agent, so plain "ssh -p PORT" and
tools that cannot use a ProxyCommand reach the agent.`)
	cmd.Footer = `Example:
  tcptows 10000 wss://converge.example.com/client/myjob
  ssh -p 10000 -oHostKeyAlias=myjob converge@localhost`
	var (
		host      string
		logFormat string
	)
	cmd.Flags.StringVar(&host, "listen-host", "127.0.0.1", "local address to listen on; the default keeps the port private to this machine")
	var opts wsproxy.Options
	cmd.Flags.BoolVar(&opts.NoResume, "no-resume", false, "ask for plain streams: a dropped connection then ends the session (default: resumable when the agent offers it)")
	cmd.Flags.DurationVar(&opts.ResumeWindow, "resume-window", 2*time.Minute, "how long to keep reconnecting after a connection drops before giving its session up")
	cmd.Flags.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	if err := cmd.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	if cmd.Flags.NArg() != 2 {
		cli.Fatal("tcptows", errors.New("give a local PORT and a URL ws[s]://host[:port]/client/ID; see tcptows --help"), 2)
	}
	port, err := strconv.Atoi(cmd.Flags.Arg(0))
	if err != nil || port < 0 || port > 65535 {
		cli.Fatal("tcptows", fmt.Errorf("bad port %q: give a number from 1 to 65535", cmd.Flags.Arg(0)), 2)
	}
	target, err := wsproxy.ParseTarget(cmd.Flags.Arg(1))
	if err != nil {
		cli.Fatal("tcptows", err, 2)
	}
	log, err := cli.Logger(os.Stderr, logFormat, false)
	if err != nil {
		cli.Fatal("tcptows", err, 2)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		cli.Fatal("tcptows", err, 1)
	}
	log.Info("listening", "addr", ln.Addr().String(), "to", target.String())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := wsproxy.Serve(ctx, ln, target, log, opts); err != nil {
		cli.Fatal("tcptows", err, 1)
	}
}
