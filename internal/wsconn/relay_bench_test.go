//go:build unix

package wsconn

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/splice"
)

// BenchmarkRelay measures the server's hot path in one process: a sender
// (the agent's side) writes SSH-sized chunks into a WebSocket, a relay
// splices it onto a second WebSocket as the server does, and a receiver
// (wsproxy's side) reads them. Compare with BenchmarkSplice in
// internal/splice for the same over plain TCP.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{4 << 10, 32 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			sender, receiver := relayPair(b)
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			cpu0 := cpuTime()
			errc := make(chan error, 1)
			go func() {
				for range b.N {
					if _, err := sender.Write(buf); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			// Read as wsproxy does: into the splice's 64 KiB buffer.
			rbuf := make([]byte, 64<<10)
			for left := int64(b.N) * int64(size); left > 0; {
				n, err := receiver.Read(rbuf[:min(int64(len(rbuf)), left)])
				if err != nil {
					b.Fatal(err)
				}
				left -= int64(n)
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			// CPU per byte holds still on a busy machine, where wall-clock
			// throughput does not.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(int64(b.N)*int64(size))*(1<<20), "cpu-ns/MiB")
		})
	}
}

// relayPair returns the two client ends of a relay: two WebSockets to an
// httptest server whose handler splices the second onto the first, as
// server.handleClient does (websocket.NetConn on both sides).
func relayPair(b *testing.B) (sender, receiver net.Conn) {
	b.Helper()
	accepted := make(chan *websocket.Conn, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r)
		if err != nil {
			return
		}
		accepted <- c
		<-r.Context().Done()
	}))
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	ctx, cancel := context.WithCancel(context.Background())
	dial := func() (net.Conn, *websocket.Conn) {
		c, err := Dial(ctx, url, Options{})
		if err != nil {
			b.Fatal(err)
		}
		return websocket.NetConn(ctx, c, websocket.MessageBinary), <-accepted
	}
	sender, up := dial()
	receiver, down := dial()
	done := make(chan struct{})
	go func() {
		defer close(done)
		splice.Splice(websocket.NetConn(ctx, up, websocket.MessageBinary), websocket.NetConn(ctx, down, websocket.MessageBinary))
	}()
	b.Cleanup(func() {
		sender.Close()
		receiver.Close()
		<-done
		cancel()
		srv.Close()
	})
	return sender, receiver
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
