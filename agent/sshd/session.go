package sshd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/gliderlabs/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// handleSession runs a shell or a command for one SSH session: with a PTY
// when the client asked for one, with separate stdout and stderr when not.
// The exit status goes back to the client; when the session ends, what it
// started ends with it (see run). The journal records its start and end.
func (d *Server) handleSession(raw ssh.Session) {
	s := &serialSession{Session: raw} // the lifetime writes to it too
	log := d.log.With("user", s.User(), "session", shortSession(s))
	defer d.watch.Attach(s)()
	if code, ok := d.shellCommand(s); ok {
		s.Exit(code)
		return
	}
	if isObserver(s.Context()) {
		what := "a shell"
		if s.RawCommand() != "" {
			what = "a command"
		}
		s.Stderr().Write([]byte(d.readOnly(what) + "\r\n"))
		s.Exit(1)
		return
	}
	js := &journal.Session{ID: d.nextSessionID(), Kind: "shell", Command: s.RawCommand(), PTY: hasPty(s)}
	if js.Command != "" {
		js.Kind = "exec"
	}
	cmd := d.command(s)
	releaseEnv := func() {}
	if d.cfg.SessionEnv != nil {
		cmd.Env, releaseEnv = d.cfg.SessionEnv(shortSession(s), js.ID, cmd.Env)
	}
	if js.PTY { // last, to chain the PROMPT_COMMAND set before
		cmd.Env = append(cmd.Env, reportDir(cmd.Env))
	}
	end := d.journalSession(s.Context(), js)
	cs := &countedSession{Session: s}
	var code int
	var err error
	if js.Kind == "shell" && js.PTY {
		// The shell's environment and recording last as long as the shell.
		var tap *shellTap
		if tap, err = d.recordShell(s, js); err == nil {
			code, err = d.keepShell(cs, cmd, tap, releaseEnv)
		} else {
			code = 255
			releaseEnv()
		}
	} else {
		code, err = d.run(cs, cmd)
		releaseEnv()
	}
	if err != nil {
		log.Warn("session failed", "error", err)
		s.Stderr().Write([]byte("converge: " + err.Error() + "\r\n"))
	}
	end(code, cs.in.Load(), cs.out.Load())
	s.Exit(code)
}

// nextSessionID names a session or forward in the journal: "s1", "s2",
// ..., unique in this server.
func (d *Server) nextSessionID() string {
	return "s" + strconv.FormatUint(d.sessionSeq.Add(1), 10)
}

// journalSession records the start of js, a session of the connection of
// ctx, with who logged in on it (so its log line says who, too), and
// returns what records its end.
func (d *Server) journalSession(ctx ssh.Context, js *journal.Session) (end func(exit int, in, out int64)) {
	conn := ctxConn(ctx)
	d.cfg.Journal.Append(journal.Entry{Kind: journal.KindSessionStart, Conn: conn, Login: loginOf(ctx), Session: js})
	return func(exit int, in, out int64) {
		ended := *js
		ended.Exit, ended.BytesIn, ended.BytesOut = &exit, in, out
		d.cfg.Journal.Append(journal.Entry{Kind: journal.KindSessionEnd, Conn: conn, Session: &ended})
	}
}

// recordForward records a port forward of kind ("forward-local",
// "forward-remote") to or from target in the journal, and returns what
// records its end with the bytes it carried (from and to the user).
func (d *Server) recordForward(ctx ssh.Context, kind, target string) (end func(in, out int64)) {
	done := d.journalSession(ctx, &journal.Session{ID: d.nextSessionID(), Kind: kind, Target: target})
	return func(in, out int64) { done(0, in, out) }
}

// countedSession counts the bytes a session's process exchanges with
// the user, for the journal.
type countedSession struct {
	ssh.Session
	in, out atomic.Int64
}

func (c *countedSession) Read(p []byte) (int, error) {
	n, err := c.Session.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countedSession) Write(p []byte) (int, error) {
	n, err := c.Session.Write(p)
	c.out.Add(int64(n))
	return n, err
}

func (c *countedSession) Stderr() io.ReadWriter {
	return countedStderr{c.Session.Stderr(), &c.out}
}

type countedStderr struct {
	io.ReadWriter
	out *atomic.Int64
}

func (c countedStderr) Write(p []byte) (int, error) {
	n, err := c.ReadWriter.Write(p)
	c.out.Add(int64(n))
	return n, err
}

func hasPty(s ssh.Session) bool {
	_, _, ok := s.Pty()
	return ok
}

// followWindow calls resize with each window change the client sends on
// winCh, until winCh closes or the returned stop is called (stop waits
// for the goroutine that follows it to end).
func followWindow(winCh <-chan ssh.Window, resize func(ssh.Window)) (stop func()) {
	stopCh, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case w, ok := <-winCh:
				if !ok {
					return
				}
				resize(w)
			case <-stopCh:
				return
			}
		}
	}()
	return func() { close(stopCh); <-done }
}

func shortSession(s ssh.Session) string {
	id := s.Context().SessionID()
	if len(id) > 8 {
		id = id[:8]
	}
	return id
}

// command builds the process for s: the user's shell, running the client's
// command when one was given.
func (d *Server) command(s ssh.Session) *exec.Cmd {
	shell := d.cfg.Shell
	var cmd *exec.Cmd
	if raw := s.RawCommand(); raw != "" {
		cmd = exec.Command(shell, shellCommandFlag(shell), raw)
	} else {
		cmd = exec.Command(shell)
		if runtime.GOOS != "windows" {
			// A leading '-' in argv[0] makes it a login shell.
			cmd.Args[0] = "-" + filepath.Base(shell)
		}
	}
	cmd.Dir = d.cfg.Dir
	env := append(append(withoutSecrets(os.Environ()), d.cfg.Env...), s.Environ()...)
	env = append(env, "agentdir="+d.cfg.Dir)
	if pty, _, ok := s.Pty(); ok && pty.Term != "" {
		env = append(env, "TERM="+pty.Term)
	}
	cmd.Env = env
	return cmd
}

// reportDir makes bash tell the terminal its directory before each prompt
// (OSC 7), so the browser terminal uploads where the user is; a
// PROMPT_COMMAND the job set still runs after it.
func reportDir(env []string) string {
	const osc7 = `printf '\033]7;file://%s%s\007' "$HOSTNAME" "$PWD"`
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PROMPT_COMMAND="); ok && v != "" {
			return "PROMPT_COMMAND=" + osc7 + "; " + v
		}
	}
	return "PROMPT_COMMAND=" + osc7
}

// agentSecrets are the environment variables through which a job hands
// the agent its secrets (cmd/agent reads them as flag twins): the
// password, the host's private key, and the key sources, whose URLs may
// carry tokens, and the registration credentials. Sessions must not see them: whoever logs in could reuse
// the password or impersonate the host with its key.
var agentSecrets = []string{
	"CONVERGE_PASSWORD",
	"CONVERGE_HOST_KEY",
	"CONVERGE_AUTHORIZED_KEYS",
	"CONVERGE_AUTHORIZED_KEYS_DATA",
	"CONVERGE_AUTHORIZED_KEYS_FILE",
	"CONVERGE_AUTHORIZED_KEYS_URL",
	"CONVERGE_OBSERVER_KEYS",
	"CONVERGE_OBSERVER_KEYS_DATA",
	"CONVERGE_RECORD_TO",   // may be a URL with a token in it
	"CONVERGE_AGENT_TOKEN", // would register other agents as this job's
	"CONVERGE_ID_TOKEN",
}

// withoutSecrets returns env (KEY=value entries) without agentSecrets.
// Names compare case-insensitively, as Windows does. It is the one place
// where every session's environment (shell, command, on every platform)
// leaves the agent's behind.
func withoutSecrets(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(agentSecrets, func(s string) bool { return strings.EqualFold(s, name) }) {
			out = append(out, kv)
		}
	}
	return out
}

// resolveShell finds the program for sessions: name as a path or looked
// up in PATH ("cmd" finds cmd.exe on Windows), or the platform's default
// when empty.
func resolveShell(name string) (string, error) {
	if name == "" {
		return loginShell(), nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("shell %q: %w (give a path or a program in PATH)", name, err)
	}
	return p, nil
}

// exitCode turns the result of cmd.Wait into an SSH exit status: the
// command's code, or 128+signal when a signal ended it.
func exitCode(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if code := ee.ExitCode(); code >= 0 {
			return code, nil
		}
		return 128 + signalNumber(ee), nil
	}
	return 255, err
}
