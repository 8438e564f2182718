// Command agent runs in a CI job and serves SSH to users who reach its
// rendezvous ID through a Converge server.
package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/cli"
)

func main() {
	cmd := cli.New("agent", "agent [flags] ws[s]://host[:port]", `
The Converge agent runs inside a CI job. It connects out to the Converge
server (it never listens), registers a rendezvous ID, and serves an SSH
server - shells, commands, sftp and scp - to users who connect to that ID.

Users log in with the server's user name and a key from .authorized_keys in
the current directory (re-read when it changes), or from --authorized-keys.`)
	cmd.Footer = `Example:
  echo "ssh-ed25519 AAAA... you@laptop" > .authorized_keys
  ./agent --id myjob wss://converge.example.com`
	var (
		cfg       agent.Config
		keyFiles  cli.StringList
		logFormat string
		verbose   bool
	)
	f := cmd.Flags
	f.StringVar(&cfg.ID, "id", "", "rendezvous `ID` users connect to (letters, digits, . _ -); random when empty")
	f.StringVar(&cfg.Dir, "dir", "", "working directory of sessions and of .authorized_keys (default: the current directory)")
	f.Var(&keyFiles, "authorized-keys", "authorized_keys `FILE` to read as well; repeatable")
	f.StringVar(&cfg.AuthorizedKeys, "authorized-keys-data", "", "authorized_keys lines given directly, for CI secrets (set it through the environment)")
	f.StringVar(&cfg.HostKeyFile, "host-key", "", "SSH host key `FILE` (OpenSSH private key); a fresh ed25519 key per run when empty")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.BoolVar(&verbose, "verbose", false, "log debug messages")
	if err := cmd.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	switch f.NArg() {
	case 1:
		cfg.Server = f.Arg(0)
	case 0:
		cli.Fatal("agent", errors.New("missing server URL, e.g. agent --id myjob wss://converge.example.com; see agent --help"), 2)
	default:
		cli.Fatal("agent", errors.New("too many arguments: give one server URL; see agent --help"), 2)
	}
	cfg.AuthorizedKeysFiles = keyFiles
	cfg.Password = os.Getenv("CONVERGE_PASSWORD")
	log, err := cli.Logger(os.Stderr, logFormat, verbose)
	if err != nil {
		cli.Fatal("agent", err, 2)
	}
	cfg.Logger = log
	cfg.Version = cli.Version
	a, err := agent.New(cfg)
	if err != nil {
		cli.Fatal("agent", err, 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		cli.Fatal("agent", err, 1)
	}
}
