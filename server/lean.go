package server

import (
	"bufio"
	"net"
	"net/http"
	"syscall"
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
// On a plain TCP connection the library reads through a frameGate, and
// Hijack leaves the socket in raw, for the control loop to wait on.
type leanHijack struct {
	http.ResponseWriter
	raw syscall.RawConn // set by Hijack: the socket, when the control loop may wait on it itself
}

func (l *leanHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if brw.Reader.Buffered() > 0 || brw.Writer.Buffered() > 0 {
		return c, brw, nil
	}
	w := bufio.NewWriterSize(c, leanBuffer)
	if l.raw = rawOf(c); l.raw != nil {
		c = gatedConn{c, &frameGate{r: c}}
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

// Unwrap gives http.ResponseController the ResponseWriter underneath.
func (l *leanHijack) Unwrap() http.ResponseWriter { return l.ResponseWriter }
