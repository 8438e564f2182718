package webterm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/converge-ci/converge/internal/resume"
)

// Dialer opens a new link to the agent: a WebSocket to /client/ID on the
// server the page came from, offering the given subprotocols. It returns
// the link (a byte stream) and the subprotocol the server chose ("" for
// a plain stream). In the browser it is the browser's WebSocket; tests
// use coder/websocket.
type Dialer func(ctx context.Context, protocols []string) (io.ReadWriteCloser, string, error)

// DialError is a failure to open the first link: the server refused or
// could not be reached. In a browser the reason is not visible (a failed
// WebSocket handshake says nothing), so the page asks the server.
type DialError struct{ Err error }

func (e *DialError) Error() string {
	return "cannot reach the agent through the server: " + e.Err.Error()
}
func (e *DialError) Unwrap() error { return e.Err }

// stream is the byte stream SSH runs over: resumable when the agent
// offers it, else the first link itself.
type stream struct {
	net.Conn
	rc    *resume.Conn // nil for a plain stream
	links *links
}

// links tracks the link a stream runs on, so that a failed heartbeat or
// the browser's "online" event can cut it, and reports pauses.
type links struct {
	mu      sync.Mutex
	cur     io.Closer
	paused  bool
	onPause func(paused bool) // may be nil
}

// watch makes l the current link and returns it wrapped so that its
// first failed read reports a pause and its first good read (the resume
// hello of a new link) reports the end of one.
func (ls *links) watch(l io.ReadWriteCloser) io.ReadWriteCloser {
	ls.mu.Lock()
	ls.cur = l
	ls.mu.Unlock()
	return &watchedLink{ReadWriteCloser: l, ls: ls}
}

func (ls *links) setPaused(p bool) {
	ls.mu.Lock()
	changed := ls.paused != p
	ls.paused = p
	ls.mu.Unlock()
	if changed && ls.onPause != nil {
		ls.onPause(p)
	}
}

// cut closes the current link; a resumable stream then dials a new one.
func (ls *links) cut() {
	ls.mu.Lock()
	c := ls.cur
	ls.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

type watchedLink struct {
	io.ReadWriteCloser
	ls   *links
	read bool
}

func (w *watchedLink) Read(p []byte) (int, error) {
	n, err := w.ReadWriteCloser.Read(p)
	if n > 0 && !w.read {
		w.read = true
		w.ls.setPaused(false)
	}
	if err != nil {
		w.ls.setPaused(true)
	}
	return n, err
}

// openStream dials the first link and, when the agent offers it, starts
// a resumable session over it.
func openStream(ctx context.Context, dial Dialer, window time.Duration, onPause func(bool), log *slog.Logger) (*stream, error) {
	l, proto, err := dial(ctx, []string{resume.Protocol})
	if err != nil {
		return nil, &DialError{Err: err}
	}
	ls := &links{onPause: onPause}
	if proto != resume.Protocol {
		return &stream{Conn: plainConn{ls.watch(l)}, links: ls}, nil
	}
	redial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		l, proto, err := dial(ctx, []string{resume.Protocol})
		if err != nil {
			return nil, err
		}
		if proto != resume.Protocol {
			l.Close()
			return nil, errors.New("the agent no longer offers resumable streams")
		}
		return ls.watch(l), nil
	}
	rc, err := resume.Dial(ls.watch(l), redial, resume.Config{Window: window, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("start the resumable stream: %w", err)
	}
	return &stream{Conn: rc, rc: rc, links: ls}, nil
}

// abort ends the stream at once, without lingering to say goodbye.
func (s *stream) abort() {
	if s.rc != nil {
		s.rc.Abort()
		return
	}
	s.Conn.Close()
}

// plainConn is a link as a net.Conn for SSH, which needs no deadlines or
// addresses. Deadlines are not supported: the Set methods return an
// error.
type plainConn struct{ io.ReadWriteCloser }

var errNoDeadline = errors.New("webterm: link deadlines are not supported")

func (plainConn) LocalAddr() net.Addr              { return linkAddr{} }
func (plainConn) RemoteAddr() net.Addr             { return linkAddr{} }
func (plainConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (plainConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (plainConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

type linkAddr struct{}

func (linkAddr) Network() string { return "websocket" }
func (linkAddr) String() string  { return "websocket" }
