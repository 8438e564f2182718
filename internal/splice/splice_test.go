package splice

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/converge-ci/converge/internal/test/testnet"
)

// TestSpliceCopiesBothWays joins two connections, sends data each way and
// checks every byte arrives and the counts match.
func TestSpliceCopiesBothWays(t *testing.T) {
	userEnd, a := testnet.TCPPair(t)
	b, agentEnd := testnet.TCPPair(t)
	done := make(chan Result, 1)
	go func() { done <- Splice(a, b) }()

	up := make([]byte, 3<<20)
	down := make([]byte, 1<<20+17)
	rand.Read(up)
	rand.Read(down)
	errc := make(chan error, 2)
	go func() { _, err := userEnd.Write(up); errc <- err }()
	go func() { _, err := agentEnd.Write(down); errc <- err }()

	gotUp := make([]byte, len(up))
	if _, err := io.ReadFull(agentEnd, gotUp); err != nil {
		t.Fatal(err)
	}
	gotDown := make([]byte, len(down))
	if _, err := io.ReadFull(userEnd, gotDown); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatal("spliced bytes differ")
	}
	// Closing one end ends the splice and closes the other side.
	userEnd.Close()
	res := <-done
	if res.AToB != int64(len(up)) || res.BToA != int64(len(down)) {
		t.Errorf("counts = %d/%d, want %d/%d", res.AToB, res.BToA, len(up), len(down))
	}
	if res.Err != nil {
		t.Errorf("Err = %v, want nil for an orderly end", res.Err)
	}
	if _, err := agentEnd.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("far end read after splice ended: %v, want EOF", err)
	}
}

type failing struct {
	net.Conn
	err error
}

func (f failing) Read([]byte) (int, error) { return 0, f.err }

func TestSpliceReportsFirstError(t *testing.T) {
	_, a := testnet.TCPPair(t)
	b, _ := testnet.TCPPair(t)
	boom := errors.New("boom")
	res := Splice(failing{a, boom}, b)
	if !errors.Is(res.Err, boom) {
		t.Fatalf("Err = %v, want boom", res.Err)
	}
}

// BenchmarkSplice measures splice throughput over loopback TCP against a
// plain io.Copy over the same kind of connection.
func BenchmarkSplice(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.Run("splice", func(b *testing.B) {
		src, a := testnet.TCPPair(b)
		c, dst := testnet.TCPPair(b)
		go Splice(a, c)
		run(b, src, dst, buf)
	})
	b.Run("direct", func(b *testing.B) {
		src, dst := testnet.TCPPair(b)
		run(b, src, dst, buf)
	})
}

func run(b *testing.B, src, dst net.Conn, buf []byte) {
	b.SetBytes(int64(len(buf)))
	go func() {
		for range b.N {
			if _, err := src.Write(buf); err != nil {
				return
			}
		}
	}()
	got := make([]byte, len(buf))
	for range b.N {
		if _, err := io.ReadFull(dst, got); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCountedReportsAsItMoves: the counters see bytes while the splice
// still runs, both between TCP connections (spliced in the kernel on
// Linux) and between other streams (copied by hand).
func TestCountedReportsAsItMoves(t *testing.T) {
	pairs := map[string]func(t *testing.T) (net.Conn, net.Conn){
		"tcp": func(t *testing.T) (net.Conn, net.Conn) { return testnet.TCPPair(t) },
		"pipe": func(t *testing.T) (net.Conn, net.Conn) {
			a, b := net.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			return a, b
		},
	}
	for name, pair := range pairs {
		t.Run(name, func(t *testing.T) {
			userEnd, a := pair(t)
			b, agentEnd := pair(t)
			moved := make(chan int64, 100)
			done := make(chan Result, 1)
			go func() {
				done <- Counted(a, b, func(n int64) { moved <- n }, nil)
			}()
			go userEnd.Write(make([]byte, 1000))
			got := make([]byte, 1000)
			if _, err := io.ReadFull(agentEnd, got); err != nil {
				t.Fatal(err)
			}
			var sum int64
			for sum < 1000 {
				sum += <-moved // before the splice has ended
			}
			select {
			case res := <-done:
				t.Fatalf("splice ended early: %+v", res)
			default:
			}
			agentEnd.Close()
			if res := <-done; res.AToB != 1000 || sum != 1000 {
				t.Errorf("counted %d bytes, result %d; want 1000 both", sum, res.AToB)
			}
		})
	}
}
