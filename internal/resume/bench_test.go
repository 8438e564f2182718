package resume

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
)

// BenchmarkThroughput compares a plain in-memory pipe with a resumable
// session over the same kind of pipe: the cost of framing, buffering and
// acknowledging, without any network. (make bench measures the whole path
// with resume on and off.)
func BenchmarkThroughput(b *testing.B) {
	chunk := make([]byte, 32<<10) // an SSH packet's worth
	run := func(b *testing.B, w io.Writer, r io.Reader) {
		b.SetBytes(int64(len(chunk)))
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.CopyN(io.Discard, r, int64(b.N)*int64(len(chunk)))
		}()
		b.ResetTimer()
		for range b.N {
			if _, err := w.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		<-done
	}
	b.Run("raw", func(b *testing.B) {
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		run(b, c1, c2)
	})
	b.Run("resumable", func(b *testing.B) {
		cfg := testConfig()
		acc, err := NewAcceptor(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer acc.Close()
		c1, c2 := net.Pipe()
		accepted := make(chan *Conn, 1)
		go func() { c, _ := acc.Attach(c2); accepted <- c }()
		client, err := Dial(c1, func(ctx context.Context) (io.ReadWriteCloser, error) {
			return nil, errors.New("no redial in a benchmark")
		}, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer client.Abort()
		server := <-accepted
		run(b, client, server)
	})
}
