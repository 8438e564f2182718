package server

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
)

// leanBuffer is the size of the buffers an agent's control connection
// reads and writes through: room for a ping, a pong or a small control
// message; a larger one passes straight through.
const leanBuffer = 128

// leanHijack is a ResponseWriter whose Hijack hands the connection over
// with buffers of leanBuffer bytes instead of net/http's 4 KiB each. An
// agent's control connection holds its buffers for its whole life (the
// WebSocket library reads and writes through them) and carries a few
// small messages a minute: 8 KiB of an idle agent's memory for nothing
// (docs/design.md, "Where an idle agent's memory goes"). Should the
// client have sent bytes behind its request, which net/http's reader then
// holds, the connection is handed over with net/http's buffers as they
// are, so that nothing is lost.
//
// On a plain TCP connection the library reads through a frameGate, which
// Hijack leaves in gate for the control loop to wait on; bytes the client
// sent right behind its request (an agent's hello, sent the moment the
// 101 arrives, which net/http's background read may have taken) are
// handed over through it, first.
type leanHijack struct {
	http.ResponseWriter
	gate *frameGate // set by Hijack: nil when the control loop waits in the library's read
}

func (l *leanHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	raw := rawOf(c)
	if brw.Writer.Buffered() > 0 || raw == nil && brw.Reader.Buffered() > 0 {
		return c, brw, nil
	}
	w := bufio.NewWriterSize(c, leanBuffer)
	if raw != nil {
		early, _ := brw.Reader.Peek(brw.Reader.Buffered())
		l.gate = newFrameGate(c, raw, bytes.Clone(early))
		c = gatedConn{c, l.gate}
	}
	return c, bufio.NewReadWriter(bufio.NewReaderSize(c, leanBuffer), w), nil
}

// gatedConn is a connection read through a frameGate. The library is
// handed it, not only a reader over it: it reads the connection it is
// handed, behind whatever was buffered.
type gatedConn struct {
	net.Conn
	gate *frameGate
}

func (g gatedConn) Read(p []byte) (int, error) { return g.gate.Read(p) }

// Close closes the connection and tells whoever asked (an agent parked in
// the idle poller, whose socket leaves the poller's set without an event).
func (g gatedConn) Close() error {
	err := g.Conn.Close()
	if f := g.gate.onClose.Load(); f != nil {
		(*f)()
	}
	return err
}

// Unwrap gives http.ResponseController the ResponseWriter underneath.
func (l *leanHijack) Unwrap() http.ResponseWriter { return l.ResponseWriter }
