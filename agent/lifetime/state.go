package lifetime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/converge-ci/converge/agent/statedir"
)

// The agent's files for `agent wait` and --detach live in dir/.converge:
//
//	agent.json  the state: pid, whether registered, sessions, expiry, and at
//	            the end the exit status and why (written atomically)
//	agent.log   what a detached agent prints
//	wait        created by `agent wait`: end as soon as nobody is connected
//	            and nothing holds the agent
//
// Files rather than a socket: the agent never listens, and files work the
// same on every OS and survive the agent for `agent wait` to read.
const (
	// StateDir is the directory of these files, in the agent's directory.
	StateDir         = ".converge"
	stateName        = "agent.json"
	logName          = "agent.log"
	waitRequestName  = "wait"
	stateFileVersion = 1
)

// agentState is the content of agent.json.
type agentState struct {
	Version    int       `json:"version"`
	PID        int       `json:"pid"`
	ID         string    `json:"id"`
	Server     string    `json:"server"`
	Started    time.Time `json:"started"`
	Registered bool      `json:"registered"`
	stateSnapshot
	Exited     bool   `json:"exited"`
	ExitStatus int    `json:"exit_status"`
	Reason     string `json:"reason,omitempty"`
	// NoLogin: the agent ended because nobody logged in in time, which is
	// no failure of the job whatever ExitStatus --no-login-status chose.
	NoLogin bool `json:"no_login,omitempty"`
}

// stateSnapshot is the part of agentState the lifetime updates.
type stateSnapshot struct {
	Sessions  int       `json:"sessions"`
	Logins    int       `json:"logins"`
	Expiry    time.Time `json:"expiry,omitzero"`
	HeldUntil time.Time `json:"held_until,omitzero"`
	Waiting   bool      `json:"waiting"`               // `agent wait` asked the agent to end when unused
	Failed    bool      `json:"failed,omitempty"`      // `agent wait --failed` said the job failed
	Kept      int       `json:"kept_shells,omitempty"` // shells left running (see Lifetime.Keep)
}

// StateFile writes agent.json for `agent wait` and --detach, and reads
// wait's request. Its methods are safe for concurrent use. A file that
// cannot be written is logged, never fatal: the agent runs on, and only
// `agent wait` cannot follow it.
type StateFile struct {
	dir string // Dir/.converge
	log *slog.Logger

	mu      sync.Mutex
	st      agentState
	written bool
	refused bool // begin found the folder unsafe: write nothing there
}

// NewStateFile prepares the state file of the agent with ID id, registered
// with server, whose directory is agentDir. It writes nothing until the
// Lifetime given it starts.
func NewStateFile(agentDir, id, server string, log *slog.Logger) *StateFile {
	return &StateFile{
		dir: filepath.Join(agentDir, StateDir),
		log: log,
		st:  agentState{Version: stateFileVersion, PID: os.Getpid(), ID: id, Server: server},
	}
}

// begin records a fresh start, dropping a wait request left by an earlier
// run in the same directory.
func (f *StateFile) begin() {
	if _, err := makeStateDir(f.dir); err != nil {
		f.log.Warn("cannot use the state directory; `agent wait` will not find this agent", "error", err)
		f.mu.Lock()
		f.refused = true
		f.mu.Unlock()
		return
	}
	if old, err := readState(filepath.Dir(f.dir)); err == nil && !old.Exited && old.PID != os.Getpid() && processAlive(old.PID) {
		f.log.Warn("another agent seems to run in this directory; `agent wait` will follow this one", "pid", old.PID)
	}
	if err := os.Remove(filepath.Join(f.dir, waitRequestName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		f.log.Warn("cannot remove an old wait request", "error", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.Started = time.Now().Round(0)
	f.writeLocked()
}

func (f *StateFile) registered() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.st.Registered {
		f.st.Registered = true
		f.writeLocked()
	}
}

func (f *StateFile) update(s stateSnapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.Expiry = s.Expiry.Truncate(time.Second)
	s.HeldUntil = s.HeldUntil.Truncate(time.Second)
	if s != f.st.stateSnapshot || !f.written {
		f.st.stateSnapshot = s
		f.writeLocked()
	}
}

func (f *StateFile) exit(status int, reason string, noLogin bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.Exited, f.st.ExitStatus, f.st.Reason, f.st.NoLogin = true, status, reason, noLogin
	f.writeLocked()
}

// waitRequested reports whether `agent wait` has asked the agent to end
// when unused, and whether it said the job failed (`agent wait --failed`
// writes "failed" into the request).
func (f *StateFile) waitRequested() (requested, failed bool) {
	b, err := os.ReadFile(filepath.Join(f.dir, waitRequestName))
	if err != nil {
		return false, false
	}
	return true, strings.TrimSpace(string(b)) == waitFailed
}

// waitFailed is the content of the wait request of `agent wait --failed`.
const waitFailed = "failed"

func (f *StateFile) writeLocked() {
	if f.refused {
		return
	}
	b, err := json.MarshalIndent(f.st, "", "  ")
	if err != nil {
		f.log.Warn("cannot encode the state file", "error", err)
		return
	}
	path := filepath.Join(f.dir, stateName)
	tmp := path + ".tmp"
	if err := writeNoFollow(f.dir, stateName+".tmp", append(b, '\n')); err != nil {
		f.log.Warn("cannot write the state file; `agent wait` will not follow this agent", "error", err)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		f.log.Warn("cannot write the state file; `agent wait` will not follow this agent", "error", err)
		return
	}
	f.written = true
}

// writeNoFollow writes b to the file name in dir, replacing a symlink
// there rather than following it.
func writeNoFollow(dir, name string, b []byte) error {
	w, err := statedir.Create(dir, name, 0o644)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// readState reads the state file of the agent in dir.
func readState(dir string) (agentState, error) {
	var st agentState
	b, err := os.ReadFile(filepath.Join(dir, StateDir, stateName))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read %s: %w", filepath.Join(dir, StateDir, stateName), err)
	}
	return st, nil
}

// makeStateDir makes the state directory stateDir as the private state
// folder is made (statedir.Make: no symlink, this user's, 0700), with a
// .gitignore that ignores everything in it (unless there is one), so that
// the agent's files, and the agent itself when the job downloads it
// there, leave the checkout clean for a job that checks it.
func makeStateDir(stateDir string) (string, error) {
	dir, err := statedir.Make(stateDir)
	if err != nil {
		return "", err
	}
	if _, err := os.Lstat(filepath.Join(dir, ".gitignore")); err == nil {
		return dir, nil
	}
	return dir, writeNoFollow(dir, ".gitignore", []byte("*\n"))
}
