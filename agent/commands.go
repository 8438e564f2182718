package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/converge-ci/converge/agent/ctl"
	"github.com/converge-ci/converge/agent/journal"
)

// commands is the table of the converge command's subcommands (see
// package ctl). Add a row for a new one; its Run reads the agent.
func (a *Agent) commands() []ctl.Command {
	return append([]ctl.Command{
		{Name: "who", Usage: "[--json]", Summary: "who is in this job now: name, key, way in, since when, sessions", Run: a.cmdWho},
		{Name: "status", Summary: "this agent: its ID, users, and when it ends", Run: a.cmdStatus},
		{Name: "ls", Summary: "the shells kept running here: name, size, idle time, who is attached", Run: a.cmdLs},
		{Name: "extend", Usage: "DURATION", Summary: "hold the agent up DURATION from now (30m, 2h), as .hold does", Run: a.cmdExtend},
		{Name: "get", Usage: "FILE…", Summary: "download files: the browser terminal saves them; in ssh, prints the scp line", Run: a.cmdGet},
		{Name: "copy", Usage: "FILE", Summary: "put FILE's text on your local clipboard (OSC 52)", Run: a.cmdCopy},
	}, a.stepCommands()...)
}

// cmdWho lists the people logged in now, from the journal.
func (a *Agent) cmdWho(_ context.Context, c *ctl.Call) error {
	var here []journal.Person
	for _, p := range journal.People(a.journal.Entries()) {
		if p.Until.IsZero() {
			here = append(here, p)
		}
	}
	switch {
	case len(c.Args) == 1 && c.Args[0] == "--json":
		enc := json.NewEncoder(c.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(here)
	case len(c.Args) > 0:
		c.Exit = 2
		return fmt.Errorf("unexpected arguments %q; usage: converge who [--json]", c.Args)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(c.Stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKEY\tWAY IN\tSINCE\tSESSIONS\t")
	for _, p := range here {
		name := p.Login.Name()
		if p.Conn == c.Caller.Conn {
			name += " (you)"
		}
		key := p.Login.Fingerprint
		if p.Login.CertKeyID != "" {
			key = fmt.Sprintf("cert %q serial %d for %s", p.Login.CertKeyID, p.Login.CertSerial, p.Login.Principal)
		}
		if key == "" {
			key = p.Login.Method
		}
		var kinds []string
		for _, s := range p.Sessions {
			k := s.Kind
			if s.Command != "" {
				k += " " + fmt.Sprintf("%q", s.Command)
			}
			kinds = append(kinds, k)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s (%s ago)\t%d open %v\t\n", name, key, p.Login.Way,
			p.Since.Local().Format("15:04:05"), now.Sub(p.Since).Round(time.Second), len(p.Sessions), kinds)
	}
	return tw.Flush()
}

// cmdStatus says which agent this is, where `agent run`'s step stands,
// and when the agent ends.
func (a *Agent) cmdStatus(_ context.Context, c *ctl.Call) error {
	fmt.Fprintf(c.Stdout, "agent %s (version %s), server %s\n", a.cfg.ID, a.cfg.Version, a.cfg.Server)
	fmt.Fprint(c.Stdout, a.Describe())
	fmt.Fprintf(c.Stdout, "journal: %s\n", a.stateDir+"/"+journalName)
	return nil
}

// cmdLs lists the kept shells, as ssh ID ls does.
func (a *Agent) cmdLs(_ context.Context, c *ctl.Call) error {
	if len(c.Args) > 0 {
		c.Exit = 2
		return fmt.Errorf("unexpected arguments %q; usage: converge ls", c.Args)
	}
	a.ssh.ListShells(c.Stdout)
	return nil
}
