package sshd

import (
	"io"

	"github.com/gliderlabs/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// ShellInfo describes an interactive shell as it starts, for its
// recording.
type ShellInfo struct {
	Conn    string // the connection, as the journal names it
	Session string // the session's journal ID
	Login   *journal.Login
	Width   int
	Height  int
	Term    string
	Shell   string
}

// ShellRecording receives what one interactive shell shows: the
// terminal's output as the agent reads it (one place, whoever watches),
// what users type, and window sizes. Its methods must not block for
// long: they run on the terminal's copy loops. Close is called once,
// when the shell has ended; calls after it must be harmless.
type ShellRecording interface {
	Output(p []byte)
	Input(p []byte)
	Resize(width, height int)
	Close() error
}

// recordShell starts the recording of s, an interactive shell (a PTY and
// no command) that the journal names js, when Config.RecordShell is set.
// Exec sessions, SFTP and forwards are not recorded: the journal has
// their commands, targets and byte counts. It returns nil when s is not
// recorded; a nil *shellTap taps nothing. An error means the shell
// must not run.
func (d *Server) recordShell(s ssh.Session, js *journal.Session) (*shellTap, error) {
	if d.cfg.RecordShell == nil || js.Kind != "shell" || !js.PTY {
		return nil, nil
	}
	ptyReq, _, _ := s.Pty()
	rec, err := d.cfg.RecordShell(ShellInfo{Conn: ctxConn(s.Context()), Session: js.ID, Login: loginOf(s.Context()),
		Width: ptyReq.Window.Width, Height: ptyReq.Window.Height, Term: ptyReq.Term, Shell: d.cfg.Shell})
	if err != nil || rec == nil {
		return nil, err
	}
	return &shellTap{rec: rec}, nil
}

// shellTap hooks a ShellRecording to a terminal's copy loops. Its
// methods do nothing on a nil *shellTap.
type shellTap struct{ rec ShellRecording }

// output returns w, recording what goes through it.
func (t *shellTap) output(w io.Writer) io.Writer {
	if t == nil {
		return w
	}
	return tapWriter{w, t.rec.Output}
}

// input returns r, recording what is read from it.
func (t *shellTap) input(r io.Reader) io.Reader {
	if t == nil {
		return r
	}
	return io.TeeReader(r, tapWriter{io.Discard, t.rec.Input})
}

func (t *shellTap) resize(w ssh.Window) {
	if t != nil {
		t.rec.Resize(w.Width, w.Height)
	}
}

func (t *shellTap) close() {
	if t != nil {
		t.rec.Close() // the recorder logs its own failures
	}
}

// tapWriter records p, then writes it to w.
type tapWriter struct {
	w      io.Writer
	record func([]byte)
}

func (t tapWriter) Write(p []byte) (int, error) {
	t.record(p)
	return t.w.Write(p)
}
