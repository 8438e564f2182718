package agent

import (
	"fmt"
	"os"

	"github.com/converge-ci/converge/agent/ctl"
	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/agent/statedir"
)

// journalName is the journal's file in the state folder.
const journalName = "journal.jsonl"

// openState makes the agent's private state folder and what lives in
// it: the journal's file, the converge command's socket and its bin/
// folder. Run calls it, so that New (which `agent --detach` calls before
// it starts the agent in the background) leaves no files.
// A folder that cannot be made safely stops the agent; the converge
// command failing only costs the command (logged).
func (a *Agent) openState() error {
	dir := a.cfg.StateDir
	switch {
	case dir == "" && a.cfg.StateFile:
		dir = statedir.Choose("", a.cfg.ID, a.cfg.Dir, os.Getenv)
	case dir == "":
		tmp, err := os.MkdirTemp("", "converge-agent-")
		if err != nil {
			return fmt.Errorf("state folder: %w", err)
		}
		dir, a.removeDir = tmp, true
	}
	for _, w := range statedir.Warnings(dir) {
		a.log.Warn(w)
	}
	dir, err := statedir.Make(dir)
	if err != nil {
		return err
	}
	a.stateDir = dir
	f, err := statedir.Create(dir, journalName, 0o600)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := a.journal.Persist(f); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	a.log.Info("state folder", "dir", dir, "journal", f.Name())
	if err := a.startRecords(); err != nil {
		return err
	}
	exe := a.cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			a.log.Warn("no converge command in sessions: cannot find the agent binary", "error", err)
			return nil
		}
	}
	if a.ctl, err = ctl.Listen(dir, a.commands(), a.log); err != nil {
		a.log.Warn("no converge command in sessions", "error", err)
		return nil
	}
	if a.bin, err = ctl.MakeBin(dir, exe, os.Getenv); err != nil {
		a.log.Warn("no converge command in sessions", "error", err)
	}
	return nil
}

// closeState ends the journal with why the agent ends, closes the
// converge command's socket, and removes a temporary state folder.
func (a *Agent) closeState(reason string) {
	if a.ctl != nil {
		a.ctl.Close()
	}
	if a.journal != nil {
		a.journal.Append(journal.Entry{Kind: journal.KindEnd, Note: reason})
		a.stopReceipt()
		a.journal.Close()
	}
	if a.removeDir {
		os.RemoveAll(a.stateDir)
	}
}

// sessionEnv is the SSH server's SessionEnv: the converge command on
// PATH, and this session's secret for it.
func (a *Agent) sessionEnv(conn, session string, env []string) ([]string, func()) {
	if a.ctl == nil || a.bin == nil {
		return env, func() {}
	}
	extra, release := a.ctl.Session(ctl.Caller{Conn: conn, Session: session})
	return append(a.bin.Env(env), extra...), release
}

// StateDir is the agent's private state folder.
func (a *Agent) StateDir() string { return a.stateDir }

// Journal is the agent's journal.
func (a *Agent) Journal() *journal.Journal { return a.journal }
