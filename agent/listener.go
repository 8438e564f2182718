package agent

import (
	"net"
	"sync"
)

// streamListener is a net.Listener whose connections are the client streams
// the agent dials back to the server. The SSH server Serves it like any
// listener, so the agent never listens on a socket.
type streamListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// deliver hands c to Accept. It reports false (and closes c) if the
// listener is closed.
func (l *streamListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return streamAddr{} }

type streamAddr struct{}

func (streamAddr) Network() string { return "converge" }
func (streamAddr) String() string  { return "converge-stream" }
