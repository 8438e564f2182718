package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/testnet"
)

// pair is a TCP connection on loopback and its peer.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	a, b := testnet.TCPPair(t)
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func raw(t *testing.T, c syscall.Conn) *FD {
	t.Helper()
	fd := For(c)
	if fd == nil {
		t.Fatal("For refused a non-blocking socket")
	}
	return fd
}

// A large write goes out whole, in as many calls as the socket's buffer
// takes, while the peer reads slowly; the peer reads every byte in order,
// then the end.
func TestWriteAllReadInOrder(t *testing.T) {
	a, b := pair(t)
	wa, rb := raw(t, a), raw(t, b)
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 7 >> 3)
	}
	errs := make(chan error, 1)
	go func() {
		n, err := wa.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		a.CloseWrite()
		errs <- err
	}()
	var got bytes.Buffer
	buf := make([]byte, 3000) // small reads: the writer waits on a full socket
	for {
		n, err := rb.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, not the %d written, or not in order", got.Len(), len(want))
	}
}

// A read waiting for bytes ends on the connection's deadline and on its
// Close, as an ordinary read does.
func TestReadDeadlineAndClose(t *testing.T) {
	a, _ := pair(t)
	fd := raw(t, a)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := fd.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a deadline error", err)
	}
	a.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := fd.Read(make([]byte, 10)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end a waiting read")
	}
}

// A write to a connection whose peer has gone fails with the system's
// error, and a zero-length read returns at once.
func TestWriteToGonePeer(t *testing.T) {
	a, b := pair(t)
	fd := raw(t, a)
	if n, err := fd.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	b.SetLinger(0)
	b.Close() // a reset
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = fd.Write(make([]byte, 64<<10))
		time.Sleep(time.Millisecond)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "write" {
		t.Fatalf("write to a reset connection: %v, want the system call's error", err)
	}
}

// A blocking descriptor (a terminal, or one a program left blocking) is
// refused: a raw call on it would hold the runtime's processor while it
// blocks.
func TestBlockingRefused(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if For(r) == nil {
		t.Fatal("For refused os.Pipe's non-blocking end")
	}
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	br, bw := os.NewFile(uintptr(p[0]), "blocking"), os.NewFile(uintptr(p[1]), "blocking")
	defer br.Close()
	defer bw.Close()
	if For(br) != nil || For(bw) != nil {
		t.Fatal("For took a blocking descriptor")
	}
}

// A regular file is refused even when non-blocking: a write to a slow
// disk stays in the kernel, which only an ordinary call may do.
func TestRegularFileRefused(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "rawio")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.SetNonblock(int(f.Fd()), true); err != nil {
		t.Fatal(err)
	}
	if For(f) != nil {
		t.Fatal("For took a regular file")
	}
}
