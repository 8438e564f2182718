package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/converge-ci/converge/agent/ctl"
	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/wire"
)

// copyLimit bounds what `converge copy` puts on the clipboard: OSC 52 is
// one escape sequence, and terminals drop long ones (xterm.js and tmux
// take about 1 MB; 100 KiB is plenty for a command line or a log excerpt).
const copyLimit = 100 << 10

// wayIn is how the caller's connection reached the agent (journal.WaySSH
// or journal.WayBrowser), from the journal's login entry; "" if unknown.
func (a *Agent) wayIn(c *ctl.Call) string {
	for _, p := range journal.People(a.journal.Entries()) {
		if p.Conn == c.Caller.Conn {
			return p.Login.Way
		}
	}
	return ""
}

// cmdGet is `converge get FILE…`: in the browser terminal, the page
// offers each file for download over the SFTP of its own SSH connection
// (docs/protocol.md, OSC 5379); in an OpenSSH session it prints the scp
// line that fetches them, since a terminal cannot save files.
func (a *Agent) cmdGet(_ context.Context, c *ctl.Call) error {
	if len(c.Args) == 0 {
		c.Exit = 2
		return errors.New("name the files to download: converge get FILE…")
	}
	var paths []string
	for _, arg := range c.Args {
		p := arg
		if !filepath.IsAbs(p) {
			p = filepath.Join(c.Dir, p)
		}
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s: %w", arg, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file (a directory? make an archive first: tar czf out.tgz DIR)", arg)
		}
		paths = append(paths, p)
	}
	if a.wayIn(c) == journal.WayBrowser {
		for _, p := range paths {
			fmt.Fprintf(c.Stdout, "\x1b]5379;get;%s\a", base64.StdEncoding.EncodeToString([]byte(p)))
		}
		fmt.Fprintf(c.Stdout, "converge: offered %d file(s); the page asks where to save them\n", len(paths))
		return nil
	}
	client := a.cfg.Server + wire.ClientPath(a.cfg.ID)
	fmt.Fprintf(c.Stdout, "This is an SSH session: fetch the file(s) from your own machine with\n")
	for _, p := range paths {
		fmt.Fprintf(c.Stdout, "  scp -oProxyCommand=\"wsproxy %s\" -oHostKeyAlias=%s %s@localhost:%s .\n",
			client, a.cfg.ID, a.sshUser(), shellQuote(p))
	}
	return nil
}

// cmdCopy is `converge copy FILE`: put FILE's text on the clipboard of
// the terminal the session runs in, with OSC 52 (write only: nothing can
// read the clipboard back). The browser terminal writes it to the local
// clipboard; an OpenSSH user's terminal may too, if it allows OSC 52.
func (a *Agent) cmdCopy(_ context.Context, c *ctl.Call) error {
	if len(c.Args) != 1 {
		c.Exit = 2
		return errors.New("usage: converge copy FILE (for a command's output: cmd > /tmp/out; converge copy /tmp/out)")
	}
	p := c.Args[0]
	if !filepath.IsAbs(p) {
		p = filepath.Join(c.Dir, p)
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, copyLimit+1))
	if err != nil {
		return err
	}
	if len(b) > copyLimit {
		return fmt.Errorf("%s is over %d KiB: too long for a clipboard; use converge get", c.Args[0], copyLimit>>10)
	}
	fmt.Fprintf(c.Stdout, "\x1b]52;c;%s\a", base64.StdEncoding.EncodeToString(b))
	return nil
}
