package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers each line with "name: line".
func echoServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, name+": "+line)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func ask(t *testing.T, c net.Conn, r *bufio.Reader, q string) (string, error) {
	t.Helper()
	if _, err := io.WriteString(c, q+"\n"); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestCutAndRetarget(t *testing.T) {
	p, err := New(echoServer(t, "one"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := ask(t, c, r, "hi"); got != "one: hi\n" || err != nil {
		t.Fatalf("through proxy: %q, %v; want %q", got, err, "one: hi\n")
	}
	if n := p.Cut(); n != 1 {
		t.Errorf("Cut cut %d connections, want 1", n)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("read after Cut succeeded; want an error")
	}

	p.Retarget(echoServer(t, "two"))
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r2 := bufio.NewReader(c2)
	if got, err := ask(t, c2, r2, "again"); got != "two: again\n" || err != nil {
		t.Fatalf("after Retarget: %q, %v; want %q", got, err, "two: again\n")
	}
}

func TestPause(t *testing.T) {
	p, err := New(echoServer(t, "e"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := ask(t, c, r, "warm"); err != nil {
		t.Fatal(err)
	}
	p.Pause()
	io.WriteString(c, "held\n")
	got := make(chan string, 1)
	go func() { s, _ := r.ReadString('\n'); got <- s }()
	select {
	case s := <-got:
		t.Fatalf("got %q while paused", s)
	case <-time.After(100 * time.Millisecond):
	}
	p.Resume()
	if s := <-got; s != "e: held\n" {
		t.Fatalf("after Resume: %q, want %q", s, "e: held\n")
	}
}
