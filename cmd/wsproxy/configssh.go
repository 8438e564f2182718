package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/wsproxy"
)

// configSSH is `wsproxy config-ssh`: one marked Host block per server in
// ~/.ssh/config.
func configSSH(args []string) {
	cmd := cli.New("wsproxy config-ssh", "wsproxy config-ssh --server ws[s]://host[:port] [flags]", `
config-ssh writes one Host block into your SSH config so that "ssh ID.SUFFIX"
(and VS Code Remote-SSH, JetBrains Gateway, sftp, scp, git) reach the agent ID
through the server, with this wsproxy as the ProxyCommand. The block is marked;
running it again rewrites that block only and never touches any other line.
ssh checks the agent's host key under the name ID.SUFFIX: the agent prints a
known_hosts line for that name with the default suffix.`)
	cmd.Footer = `Example:
  wsproxy config-ssh --server wss://converge.example.com --user converge
  ssh myjob.converge.example.com`
	var (
		c     wsproxy.SSHConfig
		print bool
		path  string
	)
	home, _ := os.UserHomeDir()
	cmd.Flags.StringVar(&c.Server, "server", "", "the server's URL, ws[s]://host[:port], as the agent was given (required)")
	cmd.Flags.StringVar(&c.Suffix, "suffix", "", "the name after the ID (default: the server's host name, which the agent's known_hosts line names)")
	cmd.Flags.StringVar(&c.User, "user", "", "the SSH user, the server's --ssh-user (default: none written, so ssh's default)")
	cmd.Flags.BoolVar(&print, "print", false, "print the block instead of writing it")
	cmd.Flags.StringVar(&path, "config", filepath.Join(home, ".ssh", "config"), "the SSH config file to write")
	if err := cmd.Parse(args); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	self, err := os.Executable()
	if err != nil {
		cli.Fatal("wsproxy config-ssh", fmt.Errorf("find this wsproxy's path: %w", err), 1)
	}
	c.Wsproxy = self
	if err := c.Validate(); err != nil {
		cli.Fatal("wsproxy config-ssh", err, 2)
	}
	if print {
		fmt.Print(c.Block())
		return
	}
	changed, err := wsproxy.WriteSSHConfig(path, c)
	if err != nil {
		cli.Fatal("wsproxy config-ssh", fmt.Errorf("write %s: %w", path, err), 1)
	}
	state := "already up to date"
	if changed {
		state = "written"
	}
	fmt.Printf("%s: the block for %s is %s.\nConnect with: ssh ID.%s\n", path, c.Server, state, c.Suffix)
}
