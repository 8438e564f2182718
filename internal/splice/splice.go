// Package splice joins two byte streams: the one function every byte pipe
// in Converge uses (server: client stream ↔ agent stream; wsproxy: stdio ↔
// stream; tcptows: TCP ↔ stream).
//
// It never drops bytes: each direction is a blocking copy, so a slow reader
// slows its writer (backpressure). It does not interpret what it carries.
// Between two TCP connections on Linux the bytes move with splice(2) and
// never enter user space (the server's raw streams, see internal/leg).
package splice

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/converge-ci/converge/internal/rawio"
)

// BufferSize is the copy buffer of each direction. SSH writes packets of up
// to 32 KiB plus framing; a larger buffer lets one read take a whole packet.
const BufferSize = 64 << 10

var buffers = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// Result of a splice: bytes copied each way and the first real error
// (end of stream and use of a closed connection are not errors).
type Result struct {
	AToB, BToA int64
	Err        error
}

// Splice copies a→b and b→a until either direction ends, then closes both
// and waits for the other copy to stop. It returns when both copies have
// returned, so no goroutine outlives it.
func Splice(a, b io.ReadWriteCloser) Result { return Counted(a, b, nil, nil) }

// Counted is Splice that also reports the bytes each direction moves as
// it moves them: aToB and bToA (either may be nil) are called with each
// piece written, from the copy goroutine of their direction.
func Counted(a, b io.ReadWriteCloser, aToB, bToA func(n int64)) Result {
	var (
		res  Result
		wg   sync.WaitGroup
		once sync.Once
	)
	copyDir := func(dst io.Writer, src io.Reader, n *int64, count func(int64)) {
		defer wg.Done()
		var err error
		*n, err = copyStream(dst, src, count)
		// The first direction to end decides: it closes both sides, so the
		// other copy's blocked Read or Write returns, and its error is the
		// one reported.
		once.Do(func() {
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				res.Err = err
			}
			a.Close()
			b.Close()
		})
	}
	wg.Add(2)
	go copyDir(b, a, &res.AToB, aToB)
	go copyDir(a, b, &res.BToA, bToA)
	wg.Wait()
	return res
}

// copyStream copies src to dst until src ends or either fails, in the
// kernel when both are TCP connections and the system can.
func copyStream(dst io.Writer, src io.Reader, count func(int64)) (int64, error) {
	if d, ok := under(dst).(*net.TCPConn); ok {
		if s, ok := under(src).(*net.TCPConn); ok {
			var sent int64
			if p, ok := src.(Prefixed); ok {
				if early := p.TakePrefix(); len(early) > 0 {
					n, err := d.Write(early)
					if n > 0 && count != nil {
						count(int64(n))
					}
					if err != nil {
						return int64(n), err
					}
					sent = int64(n)
				}
			}
			n, handled, err := kernelCopy(d, s, count)
			if !handled {
				n, err = copyBuffered(d, s, count)
			}
			return sent + n, err
		}
	}
	var r io.Reader = src
	if fd := tcpFD(src); fd != nil {
		r = fd
	}
	var w io.Writer = dst
	if fd := tcpFD(dst); fd != nil {
		w = fd
	}
	return copyBuffered(w, r, count)
}

// tcpFD is c's descriptor for reads and writes without the runtime's
// system call bookkeeping (see internal/rawio) when c is a TCP connection
// copied by hand, its other side not one (a TCP client of tcptows, a
// browser's WebSocket on the server); nil for anything else, which may
// hold bytes read early.
func tcpFD(c any) *rawio.FD {
	if tc, ok := c.(*net.TCPConn); ok {
		return rawio.For(tc)
	}
	return nil
}

// Prefixed is a connection whose first bytes were read before it was
// handed over (a raw stream whose client sent them behind its request,
// see internal/leg). Splice writes those first, then moves the rest in
// the kernel when it can.
type Prefixed interface {
	// Unprefixed is the connection under it, which its writes go to.
	Unprefixed() net.Conn
	// TakePrefix returns the bytes not read yet, once; the caller then
	// reads Unprefixed, not the Prefixed connection.
	TakePrefix() []byte
}

// WithBuffered returns c with what r still holds in front: r is the
// reader that read c past a head (an HTTP server's past a request's, a
// client's past an answer's), and what it read beyond belongs to the
// stream. Read returns those bytes first, then c's own, and Splice writes
// them, then moves the rest in the kernel when it can. Nothing held: c.
func WithBuffered(c net.Conn, r *bufio.Reader) net.Conn {
	early, _ := r.Peek(r.Buffered())
	if len(early) == 0 {
		return c
	}
	return &prefixed{Conn: c, early: bytes.Clone(early)}
}

type prefixed struct {
	net.Conn
	early []byte // not read yet
}

func (c *prefixed) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *prefixed) Unprefixed() net.Conn { return c.Conn }

func (c *prefixed) TakePrefix() []byte {
	early := c.early
	c.early = nil
	return early
}

// under is the connection that carries c's bytes: c, or the one under a
// Prefixed connection.
func under(c any) any {
	if p, ok := c.(Prefixed); ok {
		return p.Unprefixed()
	}
	return c
}

func copyBuffered(dst io.Writer, src io.Reader, count func(int64)) (int64, error) {
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	var w io.Writer = onlyWriter{dst}
	if count != nil {
		w = countingWriter{dst, count}
	}
	return io.CopyBuffer(w, onlyReader{src}, *buf)
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo so io.CopyBuffer uses our
// pooled buffer instead of allocating its own.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

type countingWriter struct {
	w     io.Writer
	count func(int64)
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if n > 0 {
		c.count(int64(n))
	}
	return n, err
}
