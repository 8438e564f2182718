// Package splice joins two byte streams: the one function every byte pipe
// in Converge uses (server: client WebSocket ↔ agent WebSocket; wsproxy:
// stdio ↔ WebSocket; tcptows: TCP ↔ WebSocket).
//
// It never drops bytes: each direction is a blocking copy, so a slow reader
// slows its writer (backpressure). It does not interpret what it carries.
package splice

import (
	"errors"
	"io"
	"net"
	"sync"
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
func Splice(a, b io.ReadWriteCloser) Result {
	var (
		res  Result
		wg   sync.WaitGroup
		once sync.Once
	)
	copyDir := func(dst io.Writer, src io.Reader, n *int64) {
		defer wg.Done()
		buf := buffers.Get().(*[]byte)
		var err error
		*n, err = io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *buf)
		buffers.Put(buf)
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
	go copyDir(b, a, &res.AToB)
	go copyDir(a, b, &res.BToA)
	wg.Wait()
	return res
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo so io.CopyBuffer uses our
// pooled buffer instead of allocating its own.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }
