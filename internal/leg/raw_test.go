package leg

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/wsconn"
)

// serve runs h on 127.0.0.1 until the test ends and returns its ws:// URL.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/stream"
}

// echoServer accepts raw streams, choosing the first offered protocol,
// and echoes them; accepted receives each server-side connection.
func echoServer(t *testing.T, accepted chan<- net.Conn) string {
	return serve(t, func(w http.ResponseWriter, r *http.Request) {
		if !Requested(r) {
			http.Error(w, "raw streams only", http.StatusUpgradeRequired)
			return
		}
		proto := ""
		if offered := offeredRaw(r); len(offered) > 0 {
			proto = offered[0]
		}
		c, err := acceptRaw(w, r, proto)
		if err != nil {
			t.Error(err)
			return
		}
		if accepted != nil {
			accepted <- c
		}
		io.Copy(c, c)
		c.Close()
	})
}

func TestDialAccept(t *testing.T) {
	accepted := make(chan net.Conn, 1)
	url := echoServer(t, accepted)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, proto, err := dialRaw(ctx, url, []string{"converge.resume.v1", "other"}, nil)
	cancel() // the handshake's context must not bound the stream
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if proto != "converge.resume.v1" {
		t.Errorf("protocol %q, want the first offered", proto)
	}
	if _, ok := (<-accepted).(*net.TCPConn); !ok {
		t.Error("the server's end is not the *net.TCPConn itself, so it cannot be spliced in the kernel")
	}
	msg := strings.Repeat("raw bytes, no frames ", 10000)
	go io.WriteString(c, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %v", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Errorf("after CloseWrite: read %q, %v; want the server's EOF", b, err)
	}
}

func TestNoProtocol(t *testing.T) {
	url := echoServer(t, nil)
	c, proto, err := dialRaw(context.Background(), url, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if proto != "" {
		t.Errorf("protocol %q offered none, want none", proto)
	}
}

// TestWebSocketOnlyServer: a server that knows only WebSockets (an old
// Converge, or a proxy) answers 426 or anything else: ErrNotSwitched, so
// the caller falls back.
func TestWebSocketOnlyServer(t *testing.T) {
	url := serve(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := wsconn.Accept(w, r)
		if err == nil {
			c.CloseNow()
		}
	})
	_, _, err := dialRaw(context.Background(), url, nil, nil)
	if !errors.Is(err, ErrNotSwitched) {
		t.Fatalf("err = %v, want ErrNotSwitched", err)
	}
}

// TestRefusal: a server that speaks raw streams and refuses is reported
// as a refusal, with its reason, not retried.
func TestRefusal(t *testing.T) {
	url := serve(t, func(w http.ResponseWriter, r *http.Request) {
		Advertise(w, r)
		http.Error(w, "no agent is connected with ID \"x\"\x1b[31m", http.StatusNotFound)
	})
	_, _, err := dialRaw(context.Background(), url, nil, nil)
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusNotFound || !strings.Contains(re.Message, `no agent is connected with ID "x"`) || strings.Contains(re.Message, "\x1b") {
		t.Fatalf("err = %#v, want a 404 refusal with the reason, made safe to print", err)
	}
}

// TestEarlyBytes: bytes a client sends right behind its request reach the
// server's stream first.
func TestEarlyBytes(t *testing.T) {
	accepted := make(chan net.Conn, 1)
	url := echoServer(t, accepted)
	nc, err := net.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	io.WriteString(nc, "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: converge-stream\r\n\r\nearly")
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("response %v, %v; want 101", resp, err)
	}
	<-accepted
	got := make([]byte, 5)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "early" {
		t.Fatalf("echo of the early bytes: %q, %v", got, err)
	}
}

func TestRequested(t *testing.T) {
	for _, tc := range []struct {
		conn, upgrade string
		want          bool
	}{
		{"Upgrade", "converge-stream", true},
		{"keep-alive, upgrade", "Converge-Stream", true},
		{"Upgrade", "websocket", false},
		{"", "converge-stream", false},
		{"Upgrade", "", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Connection", tc.conn)
		r.Header.Set("Upgrade", tc.upgrade)
		if got := Requested(r); got != tc.want {
			t.Errorf("Requested(Connection %q, Upgrade %q) = %v, want %v", tc.conn, tc.upgrade, got, tc.want)
		}
	}
}
