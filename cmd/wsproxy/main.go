// Command wsproxy connects stdin and stdout to a Converge client
// WebSocket; it is meant as an ssh ProxyCommand.
package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/wsproxy"
)

func main() {
	cmd := cli.New("wsproxy", "wsproxy [flags] ws[s]://host[:port]/client/ID", `
wsproxy connects its standard input and output to a WebSocket, so that ssh,
sftp, scp, git and IDEs reach a Converge agent through the server. Use it as
the ssh ProxyCommand; the SSH session itself runs end to end between your
ssh client and the agent.`)
	cmd.Footer = `Examples:
  ssh  -oProxyCommand="wsproxy wss://converge.example.com/client/myjob" -oHostKeyAlias=myjob converge@localhost
  sftp -oProxyCommand="wsproxy wss://converge.example.com/client/myjob" -oHostKeyAlias=myjob converge@localhost`
	if err := cmd.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	if cmd.Flags.NArg() != 1 {
		cli.Fatal("wsproxy", errors.New("give exactly one URL, ws[s]://host[:port]/client/ID; see wsproxy --help"), 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	in, out := wsproxy.OpenStdio()
	if err := wsproxy.Stdio(ctx, cmd.Flags.Arg(0), in, out); err != nil {
		cli.Fatal("wsproxy", err, 1)
	}
}
