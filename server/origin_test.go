package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// dialWith opens a WebSocket to url sending hdr, as a browser (with an
// Origin) or a tool (without) would.
func dialWith(t *testing.T, url string, hdr http.Header, protocols ...string) (*websocket.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, url, wsconn.Options{Header: hdr, Subprotocols: protocols})
	if err == nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, err
}

// wantForbidden fails unless err is a refusal before the upgrade with 403
// and a message that says why.
func wantForbidden(t *testing.T, what string, err error) {
	t.Helper()
	var refused *wsconn.RefusedError
	if !errors.As(err, &refused) || refused.Status != http.StatusForbidden || !strings.Contains(refused.Message, "Origin") {
		t.Errorf("%s: got %v, want a 403 refusal explaining the Origin", what, err)
	}
}

type originCase struct {
	name   string
	hdr    http.Header
	refuse bool
}

// originCases are requests to a server at addr, reached directly, and (if
// proxied) through a trusted proxy forwarding https://converge.example.com.
func originCases(addr string, proxied bool) []originCase {
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				out.Set(kv[i], kv[i+1])
			}
		}
		return out
	}
	if !proxied {
		return []originCase{
			{"no Origin (agents, wsproxy)", nil, false},
			{"own origin", h("Origin", "http://"+addr), false},
			{"own origin, upper case", h("Origin", "HTTP://"+strings.ToUpper(addr)), false},
			{"foreign origin", h("Origin", "http://evil.example"), true},
			{"opaque origin", h("Origin", "null"), true},
			{"other scheme", h("Origin", "https://"+addr), true},
			{"own host as a prefix", h("Origin", "http://"+addr+".evil.example"), true},
			{"second Origin foreign", http.Header{"Origin": {"http://" + addr, "http://evil.example"}}, true},
			{"forged forwarding from an untrusted peer", h("Origin", "http://evil.example", "X-Forwarded-Host", "evil.example"), true},
		}
	}
	fwd := func(origin string) http.Header {
		return h("Origin", origin, "X-Forwarded-Host", "converge.example.com", "X-Forwarded-Proto", "https")
	}
	return []originCase{
		{"no Origin", fwd(""), false},
		{"public origin", fwd("https://converge.example.com"), false},
		{"public origin, default port", fwd("https://converge.example.com:443"), false},
		{"public host, other scheme", fwd("http://converge.example.com"), true},
		{"the proxy's upstream address", fwd("http://" + addr), true},
		{"foreign origin", fwd("http://evil.example"), true},
		{"own origin without forwarding", h("Origin", "http://"+addr), false},
	}
}

// TestAgentOrigin: a web page cannot make its visitors' browsers register
// an ID. A foreign Origin is refused with 403 before the upgrade and
// before the ID is taken; no Origin, or the server's own public origin,
// works.
func TestAgentOrigin(t *testing.T) {
	for _, proxied := range []bool{false, true} {
		r := runServer(t, func(c *Config) {
			if proxied {
				c.TrustedProxies = []string{"127.0.0.0/8"}
			}
		})
		for i, tc := range originCases(r.addr, proxied) {
			id := "origin-" + string(rune('a'+i))
			if proxied {
				id += "-proxied"
			}
			c, err := dialWith(t, r.ws()+"/agent/"+id, tc.hdr, wire.ControlProtocol)
			if tc.refuse {
				wantForbidden(t, tc.name, err)
				// The ID was never taken: an agent gets it at once.
				dialAgent(t, r.ws(), id, wire.Info{Hostname: "h"})
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			a := &fakeAgent{id: id, ws: c}
			a.send(t, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test"}})
			if m := a.read(t); m.Type != wire.TypeWelcome {
				t.Errorf("%s: got %q, want welcome", tc.name, m.Type)
			}
		}
		refused := 0.0
		for _, tc := range originCases(r.addr, proxied) {
			if tc.refuse {
				refused++
			}
		}
		if got := value(t, scrape(t, r.http()), "converge_refusals_total", "endpoint", "agent", "reason", "foreign_origin"); got != refused {
			t.Errorf("proxied %v: agent foreign_origin refusals = %v, want %v", proxied, got, refused)
		}
	}
}

// TestClientOrigin: a web page cannot open a client stream to an agent
// through its visitors' browsers; the server's own pages could.
func TestClientOrigin(t *testing.T) {
	for _, proxied := range []bool{false, true} {
		r := runServer(t, func(c *Config) {
			if proxied {
				c.TrustedProxies = []string{"127.0.0.0/8"}
			}
		})
		a := dialAgent(t, r.ws(), "origin-job", wire.Info{Hostname: "h"})
		refused := 0.0
		for _, tc := range originCases(r.addr, proxied) {
			if tc.refuse {
				refused++
				_, err := dialWith(t, r.ws()+"/client/origin-job", tc.hdr)
				wantForbidden(t, tc.name, err)
				continue
			}
			dialed := make(chan struct{})
			go func() { defer close(dialed); a.echoStream(t, r.ws()) }()
			c, err := dialWith(t, r.ws()+"/client/origin-job", tc.hdr)
			<-dialed
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			echoes(t, tc.name, c)
		}
		// No dial request reached the agent for a refused client: the next
		// message it reads is for the stream below, which the server asked
		// for after all the refusals.
		dialed := make(chan struct{})
		go func() { defer close(dialed); a.echoStream(t, r.ws()) }()
		c, err := dialWith(t, r.ws()+"/client/origin-job", nil)
		<-dialed
		if err != nil {
			t.Fatal(err)
		}
		echoes(t, "last client", c)
		if got := value(t, scrape(t, r.http()), "converge_refusals_total", "endpoint", "client", "reason", "foreign_origin"); got != refused {
			t.Errorf("proxied %v: client foreign_origin refusals = %v, want %v", proxied, got, refused)
		}
	}
}

// echoes checks that bytes sent on c come back.
func echoes(t *testing.T, what string, c *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	msg := []byte("through the relay")
	if _, err := nc.Write(msg); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, back); err != nil || !bytes.Equal(back, msg) {
		t.Fatalf("%s: read %q, %v; want %q", what, back, err, msg)
	}
	nc.Close()
}
