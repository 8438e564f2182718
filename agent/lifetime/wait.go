package lifetime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/converge-ci/converge/agent/statedir"
)

// waitPoll is how often `agent wait` and --detach read the state file.
const waitPoll = 200 * time.Millisecond

// reason is how a state file and `agent wait` say why the agent ended.
func (k endKind) reason() string {
	switch k {
	case endNoLogin:
		return "nobody logged in before the connect timeout"
	case endExpired:
		return "the session expired"
	case endMaxSession:
		return "the session reached its --max-session limit"
	case endLastLogout:
		return "the last user logged out"
	case endUnused:
		return "nobody was connected when the job asked (agent wait)"
	case endDecided:
		return "the step was decided from inside the job (converge retry, pass or fail)"
	}
	return "the agent was stopped"
}

// Wait is `agent wait`: it follows the agent running in dir (started with
// --detach, or in the background with &). It asks the agent to end as
// soon as nobody is connected and no .hold holds it, so it returns at once
// when the agent is unused, and otherwise when the last user logs out or
// the session expires. It returns nil when the agent ended by its
// lifetime (nobody logging in included: that is no failure of the job),
// and an error when there is no agent to follow, it failed, or ctx ended.
//
// With failed (the job failed), an agent nobody has logged in to yet
// waits for a first login for its --connect-timeout from now, so that
// someone can look into the failure; then as above.
func Wait(ctx context.Context, dir string, failed bool, out io.Writer) error {
	stateDir := filepath.Join(dir, StateDir)
	st, err := readState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no agent has run in %s (no %s): start one there first with `agent --detach ...` or `agent ... &`, or pass --dir", dir, filepath.Join(stateDir, stateName))
	}
	if err != nil {
		return err
	}
	if !st.Exited {
		if err := requestWait(stateDir, failed); err != nil {
			return fmt.Errorf("ask the agent to end when unused: %w", err)
		}
	}
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	var last stateSnapshot
	first := true
	for {
		if st.Exited {
			fmt.Fprintf(out, "The agent %s ended: %s (exit status %d).\n", st.ID, st.Reason, st.ExitStatus)
			if st.ExitStatus == ExitOK || st.NoLogin {
				return nil
			}
			return fmt.Errorf("the agent failed: see its log in %s", filepath.Join(stateDir, logName))
		}
		if !processAlive(st.PID) {
			return fmt.Errorf("the agent (pid %d) ended without saying why; see its log in %s", st.PID, filepath.Join(stateDir, logName))
		}
		if st.Sessions > 0 && (first || st.Sessions != last.Sessions) {
			fmt.Fprintf(out, "Waiting for the agent %s: %d user(s) connected; it ends after the last logout", st.ID, st.Sessions)
			if !st.Expiry.IsZero() {
				fmt.Fprintf(out, " or at %s UTC", st.Expiry.UTC().Format("15:04:05"))
			}
			fmt.Fprintln(out, ".")
		} else if st.Sessions == 0 && st.Kept > 0 && (first || last.Sessions > 0 || last.Kept != st.Kept) {
			fmt.Fprintf(out, "Waiting for the agent %s: %d shell(s) left running (ssh -t %s attach); it ends at the idle expiry", st.ID, st.Kept, st.ID)
			if !st.Expiry.IsZero() {
				fmt.Fprintf(out, ", %s UTC", st.Expiry.UTC().Format("15:04:05"))
			}
			fmt.Fprintln(out, ".")
		} else if st.Sessions == 0 && st.Logins == 0 && st.Failed && !last.Failed {
			fmt.Fprintf(out, "The job failed: the agent %s waits for someone to log in and look", st.ID)
			if !st.Expiry.IsZero() {
				fmt.Fprintf(out, ", until %s UTC (its --connect-timeout)", st.Expiry.UTC().Format("15:04:05"))
			}
			fmt.Fprintln(out, ".")
		} else if st.Sessions == 0 && (first || last.Sessions > 0 || last.HeldUntil != st.HeldUntil) && st.HeldUntil.After(time.Now()) {
			fmt.Fprintf(out, "Waiting for the agent %s: held by %s until %s UTC.\n", st.ID, filepath.Join(dir, HoldFile), st.HeldUntil.UTC().Format("15:04:05"))
		}
		first, last = false, st.stateSnapshot
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		next, err := readState(dir)
		if err != nil {
			return fmt.Errorf("follow the agent: %w", err)
		}
		st = next
	}
}

// registerTimeout bounds how long --detach waits for the agent to register
// before leaving it to keep trying in the background.
const registerTimeout = 60 * time.Second

// Detach is `agent --detach`: it starts exe with args (an agent command
// line that does not detach again) in the background, in its own session,
// with its output in dir/.converge/agent.log. It waits until the agent has
// registered with the server, prints what the agent printed (the commands
// users need), and returns; the agent runs on after the caller exits, and
// `agent wait` follows it. When the agent exits at once, Detach returns
// its *exec.ExitError.
//
// Detach leaves a goroutine waiting for the child: it is meant to be the
// last thing its process does.
func Detach(ctx context.Context, exe string, args []string, dir string, out io.Writer) error {
	// dir is usually a checkout, which a pull request controls: a
	// committed .converge symlink must not make the log land elsewhere.
	stateDir, err := makeStateDir(filepath.Join(dir, StateDir))
	if err != nil {
		return err
	}
	logPath := filepath.Join(stateDir, logName)
	logf, err := statedir.Create(stateDir, logName, 0o600)
	if err != nil {
		return fmt.Errorf("create the agent log: %w", err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	detachProcess(cmd)
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start the agent: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	showLog := func() {
		if b, err := os.ReadFile(logPath); err == nil {
			out.Write(b)
		}
	}
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	timeout := time.NewTimer(registerTimeout)
	defer timeout.Stop()
	for {
		select {
		case err := <-exited:
			showLog()
			if err == nil {
				return errors.New("the agent exited at once; its output is above")
			}
			return fmt.Errorf("the agent exited at once (its output is above): %w", err)
		case <-ctx.Done():
			cmd.Process.Kill()
			return ctx.Err()
		case <-timeout.C:
			showLog()
			fmt.Fprintf(out, "The agent (pid %d) has not registered after %v; it keeps trying in the background. Its log: %s\n",
				cmd.Process.Pid, registerTimeout, logPath)
			return nil
		case <-t.C:
			st, err := readState(dir)
			if err != nil || st.PID != cmd.Process.Pid || !st.Registered {
				continue
			}
			showLog()
			fmt.Fprintf(out, "\nThe agent runs in the background (pid %d); its log: %s\n"+
				"At the end of the job run `agent wait` in %s (or with --dir): it returns at once\n"+
				"if nobody is connected, else when the last user logs out or the session expires.\n",
				cmd.Process.Pid, logPath, dir)
			return nil
		}
	}
}

// requestWait creates the wait request in stateDir, without following a
// symlink there.
func requestWait(stateDir string, failed bool) error {
	var req []byte
	if failed {
		req = []byte(waitFailed + "\n")
	}
	return writeNoFollow(stateDir, waitRequestName, req)
}
