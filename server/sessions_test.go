package server

import (
	"bufio"
	"context"
	"fmt"

	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"

	"github.com/converge-ci/converge/server/internal/registry"
)

func TestSessionsViewIsOffWithoutPassword(t *testing.T) {
	s := newTestServer(t)
	for _, p := range []string{"/sessions", "/sessions/events"} {
		w := serve(s, "GET", p, "192.0.2.7:1", nil)
		if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "--sessions-password") {
			t.Errorf("GET %s with the view off = %d %q, want 404 naming --sessions-password", p, w.Code, w.Body)
		}
	}
	if page := serve(s, "GET", "/", "192.0.2.7:1", nil).Body.String(); strings.Contains(page, `href="/sessions"`) {
		t.Error("usage page links to the sessions view while it is off")
	}
}

func TestSessionsViewNeedsPassword(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.SessionsPassword = "s3cret" })
	for _, tc := range []struct {
		name       string
		user, pass string
		auth       bool
		want       int
	}{
		{"no credentials", "", "", false, http.StatusUnauthorized},
		{"wrong password", "admin", "guess", true, http.StatusUnauthorized},
		{"prefix of the password", "admin", "s3cre", true, http.StatusUnauthorized},
		{"right password", "admin", "s3cret", true, http.StatusOK},
		{"any user name", "", "s3cret", true, http.StatusOK},
	} {
		for _, p := range []string{"/sessions", "/sessions/events"} {
			r, cancel := requestWithTimeout("GET", "http://relay.test"+p)
			if tc.auth {
				r.SetBasicAuth(tc.user, tc.pass)
			}
			r.RemoteAddr = "192.0.2.7:1"
			w := httptest.NewRecorder()
			if p == "/sessions/events" {
				cancel() // the stream would run until the request ends
			}
			s.Handler().ServeHTTP(w, r)
			cancel()
			if w.Code != tc.want {
				t.Errorf("%s: GET %s = %d, want %d", tc.name, p, w.Code, tc.want)
			}
			if tc.want == http.StatusUnauthorized && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("%s: GET %s: WWW-Authenticate %q, want a Basic challenge", tc.name, p, w.Header().Get("WWW-Authenticate"))
			}
		}
	}
	w := serve(s, "GET", "/", "192.0.2.7:1", nil)
	if !strings.Contains(w.Body.String(), `href="/sessions"`) {
		t.Error("usage page does not link the enabled sessions view")
	}
}

// TestSessionsLive follows the event stream while an agent comes, changes
// and goes.
func TestSessionsLive(t *testing.T) {
	r := runServer(t, func(c *Config) { c.SessionsPassword = "pw" })
	page := authGet(t, r.http()+"/sessions", "pw")
	if !strings.Contains(page, "No agent is connected") {
		t.Errorf("sessions page with no agent:\n%s", page)
	}
	ev := openEvents(t, r.http(), "pw")
	if got := ev.next(t); !strings.Contains(got, "No agent is connected") {
		t.Fatalf("first event = %q, want the empty table", got)
	}

	a := dialAgent(t, r.ws(), "live-1", wire.Info{
		Hostname: "runner-7", OS: "linux", Arch: "arm64", User: "ci", Dir: "/work/<repo>",
		CI: map[string]string{"GITHUB_RUN_ID": "991"}, Fingerprint: "SHA256:abc",
	})
	got := ev.until(t, `data-id="live-1"`)
	for _, want := range []string{"runner-7", "Linux arm64", "/work/&lt;repo&gt;", "GITHUB_RUN_ID", "991", "SHA256:abc", ">0</td>"} {
		if !strings.Contains(got, want) {
			t.Errorf("agent row lacks %q:\n%s", want, got)
		}
	}

	expiry := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	a.send(t, wire.Message{Type: wire.TypeStatus, Status: &wire.Status{Expiry: expiry, Sessions: 2}})
	got = ev.until(t, "2030-01-02 03:04:05 UTC")
	if !strings.Contains(got, ">2</td>") {
		t.Errorf("status update not shown:\n%s", got)
	}

	a.ws.Close(websocket.StatusNormalClosure, "bye")
	got = ev.until(t, "No agent is connected")
	if strings.Contains(got, "live-1") {
		t.Errorf("agent still listed after it left:\n%s", got)
	}
}

// TestDrain is SIGTERM: agents are told with close 1001, event streams
// end, and Run returns.
func TestDrain(t *testing.T) {
	r := runServer(t, func(c *Config) { c.SessionsPassword = "pw"; c.DrainTimeout = time.Minute })
	a := dialAgent(t, r.ws(), "drain-1", wire.Info{Hostname: "h"})
	ev := openEvents(t, r.http(), "pw")
	ev.until(t, "drain-1")

	readErr := make(chan error, 1)
	go func() {
		_, _, err := a.ws.Read(context.Background())
		readErr <- err
	}()
	if err := r.shutdown(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if code := websocket.CloseStatus(<-readErr); code != websocket.StatusGoingAway {
		t.Errorf("agent's connection closed with %v, want %v (1001)", code, websocket.StatusGoingAway)
	}
	for ev.sc.Scan() {
	}
	if err := ev.sc.Err(); err != nil {
		t.Errorf("event stream ended with %v, want a clean end", err)
	}
}

func authGet(t *testing.T, url, pass string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.SetBasicAuth("anyone", pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteString("\n")
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s = %d\n%s", url, resp.StatusCode, b.String())
	}
	return b.String()
}

// events reads a server-sent event stream.
type events struct {
	sc *bufio.Scanner
}

func openEvents(t *testing.T, base, pass string) *events {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/sessions/events", nil)
	req.SetBasicAuth("", pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /sessions/events = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &events{sc: sc}
}

// next returns the data of the next "agents" event.
func (e *events) next(t *testing.T) string {
	t.Helper()
	var typ string
	var data []string
	for e.sc.Scan() {
		line := e.sc.Text()
		switch {
		case line == "":
			if typ == "agents" {
				return strings.Join(data, "\n")
			}
			typ, data = "", nil
		case strings.HasPrefix(line, "event: "):
			typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
	t.Fatalf("event stream ended: %v", e.sc.Err())
	return ""
}

// until returns the first "agents" event containing want. Events carry the
// whole table, so earlier ones are simply superseded.
func (e *events) until(t *testing.T, want string) string {
	t.Helper()
	for {
		if got := e.next(t); strings.Contains(got, want) {
			return got
		}
	}
}

func requestWithTimeout(method, url string) (*http.Request, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	r, _ := http.NewRequestWithContext(ctx, method, url, nil)
	return r, cancel
}

// TestAgentFoundOnceWelcomed: an agent prints "registered" when it reads
// its welcome, and its users connect at once; the server must already
// route to it by then.
func TestAgentFoundOnceWelcomed(t *testing.T) {
	r := runServer(t)
	for i := range 50 {
		id := fmt.Sprintf("welcomed-%d", i)
		a := dialAgent(t, r.ws(), id, wire.Info{})
		// A plain GET: found agents get past the lookup and fail the upgrade.
		if code, _, body := get(t, r.http()+"/client/"+id); code == http.StatusNotFound {
			t.Fatalf("client right after %s read its welcome: %d %s", id, code, body)
		}
		a.ws.Close(websocket.StatusNormalClosure, "")
	}
}

// TestAgentsEventFraming: what an agent says about itself cannot start
// fields of its own in the event stream, nor inject markup.
func TestAgentsEventFraming(t *testing.T) {
	s := newTestServer(t)
	a := &agentConn{id: "evil", welcomed: make(chan struct{}), info: wire.Info{
		Hostname: "x\r\nevent: hijack\rdata: <script>alert(1)</script>\nid: 9",
		CI:       map[string]string{"JOB\r": "\rretry: 1"},
	}}
	if _, _, err := s.reg.Register(a.id, registry.Claim{Tenure: registry.NewTenure(time.Now())}, a); err != nil {
		t.Fatal(err)
	}
	a.ready.Store(true)
	ev := string(s.agentsEvent(context.Background()))
	if !strings.HasSuffix(ev, "\n\n") || strings.Count(ev, "\n\n") != 1 {
		t.Fatalf("event is not exactly one event:\n%q", ev)
	}
	lines := strings.Split(strings.TrimSuffix(ev, "\n\n"), "\n")
	if lines[0] != "event: agents" {
		t.Errorf("first line %q", lines[0])
	}
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "data: ") || strings.Contains(l, "\r") {
			t.Errorf("line %q is not a plain data line", l)
		}
	}
	if strings.Contains(ev, "<script>") {
		t.Error("agent-supplied markup reached the event unescaped")
	}
}

// TestSessionsViewSlowsGuessing: after ten wrong passwords an address is
// refused for the rest of the minute, even with the right one; other
// addresses are not.
func TestSessionsViewSlowsGuessing(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.SessionsPassword = "s3cret" })
	get := func(addr, pass string) int {
		r := httptest.NewRequest("GET", "http://relay.test/sessions", nil)
		r.SetBasicAuth("", pass)
		r.RemoteAddr = addr
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		return w.Code
	}
	for i := range 10 {
		if code := get("192.0.2.9:1", fmt.Sprint("guess", i)); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, code)
		}
	}
	if code := get("192.0.2.9:2", "s3cret"); code != http.StatusTooManyRequests {
		t.Errorf("after 10 wrong passwords: %d, want 429", code)
	}
	if code := get("192.0.2.10:1", "s3cret"); code != http.StatusOK {
		t.Errorf("another address: %d, want 200", code)
	}
}
