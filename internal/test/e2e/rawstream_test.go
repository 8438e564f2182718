package e2e

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestWebSocketOnlyProxy puts the server behind a reverse proxy that
// passes WebSockets but refuses raw stream upgrades, as some load
// balancers do. wsproxy and the agent ask for raw streams, are refused by
// the proxy, fall back to WebSockets, and the user notices nothing: a
// resumable ssh session works and survives a cut link.
func TestWebSocketOnlyProxy(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	backend, err := url.Parse(r.HTTP)
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(backend)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if leg.Requested(req) {
			refused.Add(1)
			http.Error(w, "this proxy passes only WebSockets", http.StatusBadRequest)
			return
		}
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)
	p := newProxy(t, strings.TrimPrefix(front.URL, "http://")) // to cut the user's link
	via := viaProxy(p)

	c := sshtest.New(t)
	startAgent(t, via, "ws-only", c)
	echo := startEcho(t, c, via.target("ws-only"))
	if n := p.Cut(); n == 0 {
		t.Fatal("no connection to cut")
	}
	echo.roundTrip()
	echo.finish()
	if refused.Load() < 2 {
		t.Errorf("the proxy refused %d raw stream requests; want at least wsproxy's and the agent's", refused.Load())
	}
}

// TestEarlyBytesBeforeTheSwitch: wsproxy sends its raw stream request and
// the stream's first bytes (the resume hello, ssh's banner) in one flight,
// before the server's 101, and the ssh session works. A proxy between
// them notes what the client sent before the server's first byte came
// back: more than the request's headers.
func TestEarlyBytesBeforeTheSwitch(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "early-job", c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var early atomic.Int64 // the most bytes a client sent behind its headers before any answer
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			cl, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", r.Addr)
			if err != nil {
				cl.Close()
				continue
			}
			var answered atomic.Bool
			var sent []byte // before the answer; only the client→server copy touches it
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer up.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := cl.Read(buf)
					if n > 0 && !answered.Load() {
						sent = append(sent, buf[:n]...)
						if i := bytes.Index(sent, []byte("\r\n\r\n")); i >= 0 {
							if extra := int64(len(sent) - i - 4); extra > early.Load() {
								early.Store(extra)
							}
						}
					}
					if n > 0 {
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				defer cl.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						answered.Store(true)
						if _, werr := cl.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	tgt := sshtest.Target{User: r.User, Alias: "early-job", ProxyCommand: bin("wsproxy") + " ws://" + ln.Addr().String() + "/client/early-job"}
	if res := c.Run("ssh", tgt, "", tgt.Dest(), "echo early"); res.Code != 0 || res.Stdout != "early\n" {
		t.Fatalf("ssh: exit %d, stdout %q, stderr %q", res.Code, res.Stdout, res.Stderr)
	}
	// The resume hello alone is 35 bytes; ssh's banner comes behind it.
	if n := early.Load(); n < 35 {
		t.Errorf("the client sent %d bytes behind its request before the server answered, want its hello and more", n)
	}
}
