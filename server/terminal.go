package server

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/static"
	"github.com/converge-ci/converge/templates"
)

// The browser terminal's files, served under /static/term/ and
// /static/vendor/xterm/. The page runs the Go SSH client (webterm.wasm,
// built by `make build` and stored gzipped) with Go's wasm_exec.js, and
// renders with the vendored xterm.js.
const (
	termPrefix  = "/static/term/"
	xtermPrefix = "/static/vendor/xterm/"
	wasmName    = "webterm.wasm"
)

// termAsset is one file of the browser terminal, held in memory.
type termAsset struct {
	path   string // URL path: /static/term/terminal.js
	body   []byte // as stored: gzip for the wasm
	gz     bool   // body is gzip
	ctype  string
	size   int64  // of what the browser runs (decompressed)
	sha256 string // hex, of what the browser runs
}

// version is the query that marks a URL of this exact content, which
// may then be cached for good.
func (a *termAsset) version() string { return a.sha256[:16] }

// url is the asset's path with its version.
func (a *termAsset) url() string { return a.path + "?v=" + a.version() }

// terminal is the browser terminal's files, read once at start.
type terminal struct {
	byPath map[string]*termAsset
	list   []*termAsset // the order /downloads and --version show
	wasm   *termAsset   // nil: built without the terminal (no make build)
}

// newTerminal reads the terminal's files from term (the page script, its
// style, wasm_exec.js, and webterm.wasm.gz when built) and xterm (the
// vendored xterm.js). Only the wasm may be missing; a missing script
// means a broken checkout and is an error.
func newTerminal(term, xterm fs.FS) (*terminal, error) {
	t := &terminal{byPath: make(map[string]*termAsset)}
	for _, f := range []struct {
		fsys      fs.FS
		prefix    string
		name      string
		ctype     string
		gz, maybe bool
	}{
		{term, termPrefix, wasmName + ".gz", "application/wasm", true, true},
		{term, termPrefix, "wasm_exec.js", "text/javascript; charset=utf-8", false, false},
		{term, termPrefix, "terminal.js", "text/javascript; charset=utf-8", false, false},
		{term, termPrefix, "terminal.css", "text/css; charset=utf-8", false, false},
		{term, termPrefix, "files.js", "text/javascript; charset=utf-8", false, false},
		{term, termPrefix, "keys.js", "text/javascript; charset=utf-8", false, false},
		{term, termPrefix, "sw.js", "text/javascript; charset=utf-8", false, false},
		{xterm, xtermPrefix, "xterm.js", "text/javascript; charset=utf-8", false, false},
		{xterm, xtermPrefix, "addon-fit.js", "text/javascript; charset=utf-8", false, false},
		{xterm, xtermPrefix, "xterm.css", "text/css; charset=utf-8", false, false},
	} {
		body, err := fs.ReadFile(f.fsys, f.name)
		if errors.Is(err, fs.ErrNotExist) && f.maybe {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("browser terminal file %s: %w", f.name, err)
		}
		a := &termAsset{path: f.prefix + strings.TrimSuffix(f.name, ".gz"), body: body, gz: f.gz, ctype: f.ctype}
		if err := a.measure(); err != nil {
			return nil, fmt.Errorf("browser terminal file %s: %w; rebuild it with make build", f.name, err)
		}
		t.byPath[a.path] = a
		t.list = append(t.list, a)
		if f.name == wasmName+".gz" {
			t.wasm = a
		}
	}
	return t, nil
}

// measure sets the size and SHA-256 of what the browser runs.
func (a *termAsset) measure() error {
	var r io.Reader = bytes.NewReader(a.body)
	if a.gz {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return err
		}
		r = zr
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return err
	}
	a.size, a.sha256 = n, hex.EncodeToString(h.Sum(nil))
	return nil
}

// TerminalSums lists the SHA-256 of every file the browser terminal runs,
// as embedded in this server, one "HASH  PATH" line each (sha256sum's
// format), so that they can be compared with a release.
func TerminalSums() (string, error) {
	t, err := newTerminal(static.Term, static.Xterm)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, a := range t.list {
		fmt.Fprintf(&b, "%s  %s\n", a.sha256, a.path)
	}
	if t.wasm == nil {
		b.WriteString("(no " + wasmName + ": built without `make build`, so no browser terminal)\n")
	}
	return b.String(), nil
}

// views lists the terminal's files for the downloads page.
func (t *terminal) views() []templates.Asset {
	var out []templates.Asset
	for _, a := range t.list {
		out = append(out, templates.Asset{Path: a.path, Size: a.size, SHA256: a.sha256})
	}
	return out
}

// assets are the versioned URLs the terminal page loads.
func (t *terminal) assets() templates.TerminalAssets {
	u := func(p string) string { return t.byPath[p].url() }
	a := templates.TerminalAssets{
		XtermCSS: u(xtermPrefix + "xterm.css"), XtermJS: u(xtermPrefix + "xterm.js"), FitJS: u(xtermPrefix + "addon-fit.js"),
		WasmExec: u(termPrefix + "wasm_exec.js"), Script: u(termPrefix + "terminal.js"), Style: u(termPrefix + "terminal.css"),
		Files: u(termPrefix + "files.js"), Keys: u(termPrefix + "keys.js"), Worker: u(termPrefix + "sw.js"),
	}
	if t.wasm != nil {
		a.Wasm = t.wasm.url()
	}
	return a
}

// serve writes one of the terminal's files. A URL with the content's
// version is cached for good; the wasm goes out gzipped to browsers that
// take it, decompressed to others.
func (t *terminal) serve(w http.ResponseWriter, r *http.Request) {
	a := t.byPath[r.URL.Path]
	if a == nil {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("X-Content-Type-Options", "nosniff")
	if r.URL.Query().Get("v") == a.version() {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	if !a.gz {
		h.Set("ETag", `"`+a.sha256+`"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
		return
	}
	h.Set("Vary", "Accept-Encoding")
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		h.Set("ETag", `"`+a.sha256+`-gz"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
		return
	}
	h.Set("ETag", `"`+a.sha256+`"`)
	h.Set("Content-Length", strconv.FormatInt(a.size, 10))
	zr, err := gzip.NewReader(bytes.NewReader(a.body))
	if err != nil { // measured at start: cannot happen
		http.Error(w, "terminal unavailable: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if r.Method != http.MethodHead {
		io.Copy(w, zr)
	}
}

// acceptsGzip reports whether an Accept-Encoding header takes gzip.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name != "gzip" && name != "x-gzip" && name != "*" {
			continue
		}
		q := 1.0
		for _, p := range strings.Split(params, ";") {
			if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(k, "q") {
				if f, err := strconv.ParseFloat(v, 64); err == nil {
					q = f
				}
			}
		}
		if q > 0 {
			return true
		}
	}
	return false
}

// terminalCSP allows the page its own scripts, compiling WebAssembly (not
// eval), WebSockets to this server, and inline styles, which xterm.js
// writes for its measured cell sizes and colours (styles cannot run code).
func terminalCSP(wsBase string) string {
	return "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; " +
		"connect-src 'self' " + wsBase + "; img-src 'self' data:; object-src 'none'; base-uri 'none'; " +
		"form-action 'none'; frame-ancestors 'none'"
}

// handleTerminal is GET /terminal/{id}: the browser terminal for an
// agent. The host key pin travels in the URL's fragment (#fp=SHA256:…),
// which browsers never send: the page reads it.
func (s *Server) handleTerminal(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := wire.ValidID(id); err != nil {
		http.Error(w, "bad rendezvous ID: "+err.Error(), http.StatusBadRequest)
		return
	}
	base, wsBase := s.bases(r)
	w.Header().Set("Content-Security-Policy", terminalCSP(wsBase))
	s.render(w, r, http.StatusOK, templates.Terminal(templates.TerminalData{
		Site: s.site(), ID: id, User: s.cfg.SSHUser, Base: base,
		Client: wsBase + wire.ClientPath(id), Assets: s.term.assets(), Verified: s.verifiedJob(r.Context(), id),
	}))
}
