package wsconn

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/testnet"
)

// TestBatchConnKeepsOrder: many writes of odd sizes, more than batchLimit
// in all, arrive complete and in order.
func TestBatchConnKeepsOrder(t *testing.T) {
	raw, peer := testnet.TCPPair(t)
	b := newBatchConn(raw)
	data := make([]byte, 3*batchLimit+12345)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		p := data
		for i := 1; len(p) > 0; i++ {
			n := min(len(p), i*97%70000+1)
			if _, err := b.Write(p[:n]); err != nil {
				errc <- err
				return
			}
			p = p[n:]
		}
		errc <- b.Close() // flushes what is queued
	}()
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes, want the %d written, in order", len(got), len(data))
	}
}

// TestBatchConnBackpressure: with a peer that does not read, Write blocks
// once the socket and batchLimit are full, rather than queueing without
// bound; reading releases it.
func TestBatchConnBackpressure(t *testing.T) {
	raw, peer := testnet.TCPPair(t)
	b := newBatchConn(raw)
	defer b.Close()
	var (
		mu      sync.Mutex
		written int
	)
	done := make(chan error, 1)
	total := 64 << 20
	go func() {
		buf := make([]byte, 32<<10)
		for n := 0; n < total; n += len(buf) {
			if _, err := b.Write(buf); err != nil {
				done <- err
				return
			}
			mu.Lock()
			written += len(buf)
			mu.Unlock()
		}
		done <- nil
	}()
	// Wait until the writer stops making progress: it is blocked.
	last := -1
	for {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		w := written
		mu.Unlock()
		if w == last {
			break
		}
		last = w
	}
	if last >= total {
		t.Fatalf("all %d bytes were accepted although the peer read nothing", total)
	}
	if _, err := io.CopyN(io.Discard, peer, int64(total)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBatchConnWriteError: once the connection fails, Write says so.
func TestBatchConnWriteError(t *testing.T) {
	raw, peer := testnet.TCPPair(t)
	b := newBatchConn(raw)
	defer b.Close()
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // reset
	buf := make([]byte, 64<<10)
	for i := 0; ; i++ {
		if _, err := b.Write(buf); err != nil {
			break
		}
		if i > 10000 {
			t.Fatal("writes to a reset connection kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBatchConnCloseStuckPeer: Close returns even when queued bytes cannot
// leave because the peer stopped reading, and later writes fail.
func TestBatchConnCloseStuckPeer(t *testing.T) {
	defer func(d time.Duration) { closeFlushTimeout = d }(closeFlushTimeout)
	closeFlushTimeout = 100 * time.Millisecond
	raw, _ := testnet.TCPPair(t)
	b := newBatchConn(raw)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 1<<20)
		for {
			if _, err := b.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // let the socket fill up
	b.Close()
	<-stopped // the blocked writer was released
	if _, err := b.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
}
