package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/converge-ci/converge/static"
	"github.com/converge-ci/converge/templates"
)

// termFS is the embedded terminal's files without the WebAssembly client
// (which exists only after `make build`), plus wasm as webterm.wasm.gz
// when it is not nil.
func termFS(t testing.TB, wasm []byte) fstest.MapFS {
	t.Helper()
	m := fstest.MapFS{}
	for _, name := range []string{"wasm_exec.js", "terminal.js", "terminal.css", "files.js", "keys.js", "sw.js"} {
		b, err := fs.ReadFile(static.Term, name)
		if err != nil {
			t.Fatal(err)
		}
		m[name] = &fstest.MapFile{Data: b}
	}
	if wasm != nil {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(wasm)
		zw.Close()
		m[wasmName+".gz"] = &fstest.MapFile{Data: gz.Bytes()}
	}
	return m
}

// fakeWasm stands in for the client: the server only stores and serves it.
var fakeWasm = append([]byte("\x00asm\x01\x00\x00\x00"), bytes.Repeat([]byte("webterm "), 4096)...)

func withWasm(t testing.TB) func(*Config) {
	return func(c *Config) { c.Term = termFS(t, fakeWasm) }
}

var scriptTag = regexp.MustCompile(`<script[^>]*>`)

// TestTerminalPage: the page loads only versioned files of this server,
// has no inline script, and is served with a CSP that allows no more
// than its scripts, WebAssembly and WebSockets to this server.
func TestTerminalPage(t *testing.T) {
	s := newTestServer(t, withWasm(t))
	w := serve(s, "GET", "/terminal/job-42", "192.0.2.7:1", nil)
	page := w.Body.String()
	if w.Code != http.StatusOK {
		t.Fatalf("GET /terminal/job-42 = %d\n%s", w.Code, page)
	}
	csp := w.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self' 'wasm-unsafe-eval';", "connect-src 'self' ws://example.com;", "object-src 'none'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-eval'") && !strings.Contains(csp, "wasm-unsafe-eval") || strings.Contains(csp, "script-src 'self' 'unsafe-inline'") {
		t.Errorf("CSP %q allows eval or inline scripts", csp)
	}
	tags := scriptTag.FindAllString(page, -1)
	if len(tags) != 6 {
		t.Errorf("page has %d script tags, want 6 (xterm, fit, wasm_exec, terminal, files, keys): %q", len(tags), tags)
	}
	for _, tag := range tags {
		if !regexp.MustCompile(`src="/static/(term|vendor/xterm)/[a-z_.-]+\.js\?v=[0-9a-f]{16}"`).MatchString(tag) {
			t.Errorf("script tag %s: want a versioned script of this server, never inline", tag)
		}
	}
	for _, want := range []string{
		`data-client="ws://example.com/client/job-42"`, `data-user="ciuser"`,
		`data-wasm="/static/term/webterm.wasm?v=` + sum(fakeWasm)[:16] + `"`,
		`id="browser-key"`, `id="connect"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if w := serve(s, "GET", "/terminal/.bad", "192.0.2.7:1", nil); w.Code != http.StatusBadRequest {
		t.Errorf("GET /terminal/.bad = %d, want 400", w.Code)
	}
}

func TestTerminalPageWithoutClient(t *testing.T) {
	s := newTestServer(t)
	page := serve(s, "GET", "/terminal/job-42", "192.0.2.7:1", nil).Body.String()
	if !strings.Contains(page, `id="no-terminal"`) || strings.Contains(page, "<script") {
		t.Errorf("terminal page of a server without the client:\n%s", page)
	}
	if w := serve(s, "GET", "/static/term/webterm.wasm", "192.0.2.7:1", nil); w.Code != http.StatusNotFound {
		t.Errorf("GET webterm.wasm without it = %d, want 404", w.Code)
	}
}

// TestTerminalFiles: the wasm goes out gzipped when the browser takes
// gzip, decompressed otherwise; versioned URLs are cached for good.
func TestTerminalFiles(t *testing.T) {
	s := newTestServer(t, withWasm(t))
	v := "?v=" + sum(fakeWasm)[:16]
	for _, tc := range []struct {
		accept string
		gz     bool
	}{
		{"gzip, deflate, br, zstd", true},
		{"br;q=1.0, gzip;q=0.8", true},
		{"", false},
		{"identity", false},
		{"gzip;q=0", false},
	} {
		w := serve(s, "GET", "/static/term/webterm.wasm"+v, "192.0.2.7:1", http.Header{"Accept-Encoding": {tc.accept}})
		body := w.Body.Bytes()
		if tc.gz {
			if w.Header().Get("Content-Encoding") != "gzip" {
				t.Errorf("Accept-Encoding %q: Content-Encoding %q, want gzip", tc.accept, w.Header().Get("Content-Encoding"))
				continue
			}
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			out.ReadFrom(zr)
			body = out.Bytes()
		} else if ce := w.Header().Get("Content-Encoding"); ce != "" {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q, want none", tc.accept, ce)
		}
		if w.Code != 200 || !bytes.Equal(body, fakeWasm) {
			t.Errorf("Accept-Encoding %q: %d, %d bytes; want 200 and the wasm", tc.accept, w.Code, len(body))
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/wasm" {
			t.Errorf("Content-Type %q, want application/wasm (instantiateStreaming needs it)", ct)
		}
		if cc := w.Header().Get("Cache-Control"); !strings.Contains(cc, "immutable") {
			t.Errorf("versioned wasm: Cache-Control %q, want immutable", cc)
		}
		if vary := w.Header().Get("Vary"); vary != "Accept-Encoding" {
			t.Errorf("Vary %q, want Accept-Encoding", vary)
		}
	}
	for path, ctype := range map[string]string{
		"/static/term/terminal.js": "text/javascript", "/static/term/wasm_exec.js": "text/javascript",
		"/static/vendor/xterm/xterm.js": "text/javascript", "/static/vendor/xterm/addon-fit.js": "text/javascript",
		"/static/vendor/xterm/xterm.css": "text/css", "/static/term/terminal.css": "text/css",
	} {
		w := serve(s, "GET", path, "192.0.2.7:1", nil)
		if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), ctype) || w.Body.Len() == 0 {
			t.Errorf("GET %s = %d %q", path, w.Code, w.Header().Get("Content-Type"))
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("GET %s without version: Cache-Control %q, want no-cache", path, cc)
		}
	}
	if w := serve(s, "GET", "/static/term/README.txt", "192.0.2.7:1", nil); w.Code != 404 {
		t.Errorf("GET /static/term/README.txt = %d, want 404: only the terminal's files are served", w.Code)
	}
}

// TestTerminalSumsPublished: /downloads lists the SHA-256 of what the
// browser runs, the wasm decompressed.
func TestTerminalSumsPublished(t *testing.T) {
	s := newTestServer(t, withWasm(t))
	page := serve(s, "GET", "/downloads", "192.0.2.7:1", nil).Body.String()
	js, _ := fs.ReadFile(static.Term, "terminal.js")
	for path, data := range map[string][]byte{"/static/term/webterm.wasm": fakeWasm, "/static/term/terminal.js": js} {
		row := regexp.MustCompile(`(?s)<tr data-path="` + regexp.QuoteMeta(path) + `">.*?</tr>`).FindString(page)
		if !strings.Contains(row, sum(data)) {
			t.Errorf("downloads page: row of %s %q lacks its SHA-256 %s", path, row, sum(data))
		}
	}
	sums, err := TerminalSums()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sums, sum(js)+"  /static/term/terminal.js\n") {
		t.Errorf("TerminalSums:\n%s\nlacks terminal.js's", sums)
	}
}

// TestTerminalLinks: the usage page and the sessions view link to the
// terminal for an ID (the sessions view without a pin: a fingerprint
// the server reports is no check against the server).
func TestTerminalLinks(t *testing.T) {
	s := newTestServer(t)
	page := serve(s, "GET", "/?id=job-7", "192.0.2.7:1", nil).Body.String()
	if !strings.Contains(page, `id="terminal-link" href="/terminal/job-7"`) {
		t.Errorf("usage page lacks the terminal link for job-7")
	}
	var b strings.Builder
	if err := templates.SessionRows([]templates.Session{{ID: "job-8", Fingerprint: "SHA256:x"}}).Render(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `href="/terminal/job-8"`) {
		t.Errorf("sessions row lacks the terminal link:\n%s", b.String())
	}
}
