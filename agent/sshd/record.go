package sshd

import (
	"io"

	"github.com/gliderlabs/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// RecordedShell describes an interactive shell as it starts, for its
// recording.
type RecordedShell struct {
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
	rec, err := d.cfg.RecordShell(RecordedShell{Conn: ctxConn(s.Context()), Session: js.ID, Login: loginOf(s.Context()),
		Width: ptyReq.Window.Width, Height: ptyReq.Window.Height, Term: ptyReq.Term, Shell: d.cfg.Shell})
	if err != nil || rec == nil {
		return nil, err
	}
	return &shellTap{rec: rec}, nil
}

// shellTap hooks a ShellRecording to a shell's terminal. Its methods do
// nothing on a nil *shellTap.
type shellTap struct{ rec ShellRecording }

// term returns t with what is read from it (the shell's output, read by
// one goroutine whoever watches), written to it (users' input) and its
// sizes recorded; closing it ends the recording.
func (tap *shellTap) term(t termFile) termFile {
	if tap == nil {
		return t
	}
	return recordedTerm{t, tap.rec}
}

// output returns w, recording what goes through it (a terminal read by
// a copy loop, on Windows).
func (tap *shellTap) output(w io.Writer) io.Writer {
	if tap == nil {
		return w
	}
	return tapWriter{w, tap.rec.Output}
}

// input returns r, recording what is read from it.
func (tap *shellTap) input(r io.Reader) io.Reader {
	if tap == nil {
		return r
	}
	return io.TeeReader(r, tapWriter{io.Discard, tap.rec.Input})
}

func (tap *shellTap) resize(w ssh.Window) {
	if tap != nil {
		tap.rec.Resize(w.Width, w.Height)
	}
}

func (tap *shellTap) close() {
	if tap != nil {
		tap.rec.Close() // the recorder logs its own failures
	}
}

// recordedTerm is a kept shell's terminal with its recording.
type recordedTerm struct {
	termFile
	rec ShellRecording
}

func (t recordedTerm) Read(p []byte) (int, error) {
	n, err := t.termFile.Read(p)
	if n > 0 {
		t.rec.Output(p[:n])
	}
	return n, err
}

func (t recordedTerm) Write(p []byte) (int, error) {
	t.rec.Input(p)
	return t.termFile.Write(p)
}

func (t recordedTerm) resize(w ssh.Window) {
	t.termFile.resize(w)
	t.rec.Resize(w.Width, w.Height)
}

func (t recordedTerm) Close() error {
	err := t.termFile.Close()
	t.rec.Close()
	return err
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
