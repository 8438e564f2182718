package leg

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wsconn"
)

// dialEarlyLeg dials url for a raw stream of protocol "p" with Early.
func dialEarlyLeg(t *testing.T, url string, fb *Fallback) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, url, DialOptions{Protocols: []string{"p"}, Raw: true, Early: true, Fallback: fb})
	if err != nil {
		t.Fatalf("Dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	if c.Protocol() != "p" {
		t.Fatalf("an early leg's protocol is %q, want the one offered", c.Protocol())
	}
	return c.NetConn(context.Background())
}

// TestEarlyBeforeTheSwitch: a client dialling with Early sends its first
// bytes behind the request without waiting for the answer: this server
// reads the request and those bytes before it answers at all. What is
// written after the answer follows on the same stream.
func TestEarlyBeforeTheSwitch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	served := make(chan error, 1)
	go func() {
		served <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err != nil || !Requested(req) || req.Header.Get(ProtocolHeader) != "p" {
				return errors.Join(errors.New("not a raw stream request for p"), err)
			}
			hello := make([]byte, len("hello"))
			if _, err := io.ReadFull(br, hello); err != nil || string(hello) != "hello" {
				return errors.Join(errors.New("the first bytes did not come before the answer"), err)
			}
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: converge-stream\r\nConverge-Protocol: p\r\n\r\nanswer")
			after := make([]byte, len(" and after"))
			if _, err := io.ReadFull(br, after); err != nil || string(after) != " and after" {
				return errors.Join(errors.New("the bytes after the answer are not the stream's next"), err)
			}
			return nil
		}()
	}()
	c := dialEarlyLeg(t, "ws://"+ln.Addr().String()+"/stream", nil)
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("answer"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "answer" {
		t.Fatalf("read %q, %v; want the server's first bytes", got, err)
	}
	if _, err := io.WriteString(c, " and after"); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// TestEarlyNotSwitchedLosesNothing: when the raw stream is not switched
// to (a proxy that passes only WebSockets, or a Converge server refusing
// a raw stream for a plain stream), the client's bytes sent before the
// answer are sent again, first and unchanged, on the WebSocket it falls
// back to, and the Fallback remembers.
func TestEarlyNotSwitchedLosesNothing(t *testing.T) {
	for name, refuse := range map[string]http.HandlerFunc{
		"proxy": func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "WebSockets only", http.StatusBadRequest)
		},
		"plain": func(w http.ResponseWriter, r *http.Request) {
			if _, err := Accept(w, r, ""); !errors.Is(err, ErrNotSwitched) {
				t.Errorf("Accept of a raw stream for no protocol: %v, want ErrNotSwitched", err)
			}
		},
	} {
		accepted := make(chan *Conn, 1)
		url := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if Requested(r) {
				refuse(w, r)
				return
			}
			if c, err := Accept(w, r, "p"); err == nil {
				accepted <- c
			}
		})
		fb := &Fallback{}
		c := dialEarlyLeg(t, url, fb)
		early := make([]byte, 40<<10)
		rand.Read(early)
		if _, err := c.Write(early); err != nil {
			t.Fatalf("%s: write before the answer: %v", name, err)
		}
		// The first Read takes the answer in and falls back; the server
		// reads first what was written before.
		read := make(chan error, 1)
		go func() {
			_, err := io.ReadFull(c, make([]byte, 2))
			read <- err
		}()
		server := <-accepted
		sc := server.Relayed(context.Background())
		got := make([]byte, len(early))
		if _, err := io.ReadFull(sc, got); err != nil || !bytes.Equal(got, early) {
			t.Fatalf("%s: the WebSocket did not carry first the bytes written before the answer (%v)", name, err)
		}
		io.WriteString(sc, "ok")
		if err := <-read; err != nil {
			t.Fatalf("%s: read from the WebSocket: %v", name, err)
		}
		io.WriteString(c, "then more")
		if _, err := io.ReadFull(sc, got[:9]); err != nil || string(got[:9]) != "then more" {
			t.Errorf("%s: then %q, %v; want the bytes written after", name, got[:9], err)
		}
		if server.Kind() != KindWebSocket || !fb.wsOnly() {
			t.Errorf("%s: the server got a %s leg, fallback remembered %v; want a WebSocket, remembered", name, server.Kind(), fb.wsOnly())
		}
		server.CloseNow()
	}
}

// TestEarlyRefusal: a refusal by a server that speaks raw streams is the
// error of the first Read, with the server's reason; nothing is retried.
func TestEarlyRefusal(t *testing.T) {
	var asked atomic.Int32
	url := serve(t, func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		Advertise(w, r)
		http.Error(w, `no agent is connected with ID "x"`, http.StatusNotFound)
	})
	c := dialEarlyLeg(t, url, &Fallback{})
	c.Write([]byte("hello"))
	_, err := c.Read(make([]byte, 1))
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusNotFound || !strings.Contains(re.Message, `"x"`) {
		t.Fatalf("Read = %v, want the 404 refusal with its reason", err)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the server was asked %d times, want once", n)
	}
}

// TestEarlyAcceptedByteExact: what a client sends behind its request,
// which the server's HTTP reader has already taken in, reaches the far
// side of the server's splice first and byte for byte, and the rest of
// the stream follows (in the kernel, as the server's raw legs move).
func TestEarlyAcceptedByteExact(t *testing.T) {
	far, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { far.Close() })
	go func() {
		for {
			c, err := far.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	url := serve(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, "p")
		if err != nil {
			t.Error(err)
			return
		}
		up, err := net.Dial("tcp", far.Addr().String())
		if err != nil {
			t.Error(err)
			c.CloseNow()
			return
		}
		splice.Splice(c.Relayed(context.Background()), up)
	})
	c := dialEarlyLeg(t, url, nil)
	early := make([]byte, 3000) // within what the HTTP server reads with the request
	rand.Read(early)
	rest := make([]byte, 1<<20)
	rand.Read(rest)
	if _, err := c.Write(early); err != nil {
		t.Fatal(err)
	}
	go c.Write(rest)
	got := make([]byte, len(early)+len(rest))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(early)], early) || !bytes.Equal(got[len(early):], rest) {
		t.Error("the stream came back changed")
	}
}
