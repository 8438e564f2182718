package resume

import (
	"io"
	"net"
	"sync"
	"time"
)

// drainTimeout bounds how long a finished session waits, after shutting
// down its sending side, for a stream link's peer to close.
const drainTimeout = 2 * time.Second

// Stream adapts c, a plain byte stream connection (a raw stream leg, see
// internal/leg), as a link. It has no pings: c's own liveness (TCP
// keepalives and user timeout) judges the hop. Instead the session sends an
// acknowledgement on it whenever it has sent nothing for keepalive, so
// that proxies and load balancers that cut idle connections keep it (a
// peer takes a repeated acknowledgement as a no-op). A finished session
// shuts c's sending side down after its last frame and waits, at most
// drainTimeout, for the peer to close, so that last frame is not lost to
// a reset. Close closes c at once.
func Stream(c net.Conn, keepalive time.Duration) io.ReadWriteCloser {
	return &streamLink{Conn: c, keepalive: keepalive, readEnded: make(chan struct{})}
}

type streamLink struct {
	net.Conn
	keepalive time.Duration
	once      sync.Once
	readEnded chan struct{} // closed when a Read has failed (EOF included)
}

func (l *streamLink) Read(p []byte) (int, error) {
	n, err := l.Conn.Read(p)
	if err != nil {
		l.once.Do(func() { close(l.readEnded) })
	}
	return n, err
}

// idleAck is how long the session may send nothing on this link.
func (l *streamLink) idleAck() time.Duration { return l.keepalive }

// closeGracefully ends the sending side and waits for the session's link
// reader to see the peer close (or give up at drainTimeout).
func (l *streamLink) closeGracefully() {
	cw, ok := l.Conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	l.Conn.SetReadDeadline(time.Now().Add(drainTimeout))
	t := time.NewTimer(drainTimeout) // in case the link reader has stopped reading
	defer t.Stop()
	select {
	case <-l.readEnded:
	case <-t.C:
	}
}
