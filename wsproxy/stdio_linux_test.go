package wsproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// ssh's pipes are read and written raw, and when ssh stops reading our
// output the stream ends as if closed, not with a broken-pipe error.
func TestStdioPipes(t *testing.T) {
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	s := newStdio(inR, outW)
	defer s.Close()
	if s.rawIn == nil || s.rawOut == nil {
		t.Fatal("pipes not taken for raw reads and writes")
	}
	inW.Write([]byte("hello"))
	b := make([]byte, 16)
	if n, err := s.Read(b); err != nil || string(b[:n]) != "hello" {
		t.Fatalf("read %q, %v", b[:n], err)
	}
	go io.Copy(io.Discard, outR)
	if _, err := s.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	outR.Close()
	for i := 0; ; i++ {
		_, err := s.Write(make([]byte, 64<<10))
		if err == nil && i < 100 {
			continue
		}
		if !errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write with the reader gone: %v, want net.ErrClosed", err)
		}
		break
	}
}
