package ctl

import (
	"encoding/json"
	"io"
	"net"
	"sync"
	"time"
)

// streamBeat is how often a streaming command that writes nothing tells
// the converge command it still runs; the command gives up on an agent
// silent for sendTimeout.
const streamBeat = 10 * time.Second

// responder writes a request's responses on its connection: the chunks
// of a streaming command (More), its beats, and the last one.
type responder struct {
	conn net.Conn
	mu   sync.Mutex
	gone bool // a write failed: the command is gone; what follows is dropped
}

func (r *responder) send(resp Response) {
	b, _ := json.Marshal(resp)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return
	}
	r.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := r.conn.Write(append(b, '\n')); err != nil {
		r.gone = true
	}
}

// stream is a writer of a streaming command's stdout (or stderr): each
// write is sent as it comes. It never fails: a command that left must not
// stop the work.
func (r *responder) stream(stderr bool) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		resp := Response{Stdout: string(p), More: true}
		if stderr {
			resp = Response{Stderr: string(p), More: true}
		}
		r.send(resp)
		return len(p), nil
	})
}

// beat sends an empty response with More every streamBeat until the
// returned stop is called (it waits for the beating goroutine).
func (r *responder) beat() (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(streamBeat)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.send(Response{More: true})
			case <-done:
				return
			}
		}
	}()
	return func() { close(done); <-stopped }
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
