package wsconn

import (
	"net"
	"sync"
	"time"
)

// batchConn is a net.Conn whose Write queues its bytes and returns; one
// flusher goroutine writes whatever has queued up, so bursts of small
// writes leave in few system calls.
//
// It exists for the client side of our WebSockets: coder/websocket masks a
// client's frame into a 4 KiB buffer and flushes it to the connection each
// time it fills, so one 32 KiB SSH packet took nine write system calls, and
// the relay spent more CPU on them than on anything else (see
// BenchmarkRelay). Queued, the nine leave in one or two.
//
// Backpressure is kept: Write blocks while batchLimit bytes wait. The first
// write error is returned by every later Write. Close lets queued bytes
// (such as a WebSocket close frame) leave first, waiting at most
// closeFlushTimeout for a peer that does not read.
type batchConn struct {
	net.Conn

	mu      sync.Mutex
	cond    sync.Cond // signalled when the queue or state changes
	queue   []byte
	spare   []byte
	err     error // first write error
	closing bool
	done    chan struct{} // closed when the flusher has stopped
	once    sync.Once
	cerr    error
}

// batchLimit bounds the queued bytes: several SSH packets, well under
// what a socket buffer holds, so it adds no noticeable buffering.
const batchLimit = 256 << 10

// closeFlushTimeout bounds how long Close waits for queued bytes to leave
// (a variable so that tests can shorten it).
var closeFlushTimeout = 5 * time.Second

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, done: make(chan struct{})}
	b.cond.L = &b.mu
	go b.flush()
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for len(p) > 0 {
		for b.err == nil && !b.closing && len(b.queue) >= batchLimit {
			b.cond.Wait()
		}
		if b.closing {
			return n, net.ErrClosed
		}
		if b.err != nil {
			return n, b.err
		}
		k := min(len(p), batchLimit-len(b.queue))
		b.queue = append(b.queue, p[:k]...)
		p = p[k:]
		n += k
		b.cond.Broadcast()
	}
	return n, nil
}

// flush writes queued bytes until the connection closes or fails.
func (b *batchConn) flush() {
	defer close(b.done)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for len(b.queue) == 0 && !b.closing {
			b.cond.Wait()
		}
		if len(b.queue) == 0 {
			return // closing, and everything has been written
		}
		out := b.queue
		b.queue = b.spare[:0]
		b.cond.Broadcast() // room for writers
		b.mu.Unlock()
		_, err := b.Conn.Write(out)
		b.mu.Lock()
		b.spare = out
		if err != nil {
			b.err = err
			b.queue = nil
			b.cond.Broadcast()
			return
		}
	}
}

// Close writes what is queued, at most closeFlushTimeout, then closes the
// connection.
func (b *batchConn) Close() error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closing = true
		b.cond.Broadcast()
		b.mu.Unlock()
		b.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		<-b.done
		b.cerr = b.Conn.Close()
	})
	return b.cerr
}
