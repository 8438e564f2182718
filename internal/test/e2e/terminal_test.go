package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// The browser terminal's client as TestMain built it.
var (
	termDir    string // terminal files for servers in this process
	wasmGzSize int    // bytes of the gzipped client
)

// Budgets of the browser terminal (issue 12).
const (
	wasmBudget = 2_500_000 // compressed client, bytes
	loadBudget = 500       // page load to the shell's first output, warm cache, ms
)

// buildTerminal builds the browser terminal's client (cmd/webterm, for
// js/wasm) as `make build` does into dir/term, beside the checkout's page
// files and the toolchain's wasm_exec.js, and writes a go build overlay
// that embeds it in the converge binary. It returns the overlay's path.
func buildTerminal(dir string) (string, error) {
	term := filepath.Join(dir, "term")
	if err := os.MkdirAll(term, 0o755); err != nil {
		return "", err
	}
	wasm := filepath.Join(dir, "webterm.wasm")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", wasm, "../../../cmd/webterm")
	cmd.Env = append(os.Environ(), "GOOS=js", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/webterm: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(wasm)
	if err != nil {
		return "", err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zw.Write(raw)
	zw.Close()
	wasmGzSize = gz.Len()
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %v", err)
	}
	files := map[string]string{ // in term/ ← from
		"wasm_exec.js": filepath.Join(strings.TrimSpace(string(goroot)), "lib", "wasm", "wasm_exec.js"),
		"terminal.js":  "../../../static/term/terminal.js",
		"terminal.css": "../../../static/term/terminal.css",
		"files.js":     "../../../static/term/files.js",
		"keys.js":      "../../../static/term/keys.js",
		"sw.js":        "../../../static/term/sw.js",
	}
	for name, from := range files {
		b, err := os.ReadFile(from)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(term, name), b, 0o644); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(term, "webterm.wasm.gz"), gz.Bytes(), 0o644); err != nil {
		return "", err
	}
	static, err := filepath.Abs("../../../static/term")
	if err != nil {
		return "", err
	}
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {
		filepath.Join(static, "webterm.wasm.gz"): filepath.Join(term, "webterm.wasm.gz"),
		filepath.Join(static, "wasm_exec.js"):    filepath.Join(term, "wasm_exec.js"),
	}})
	path := filepath.Join(dir, "overlay.json")
	termDir = term
	return path, os.WriteFile(path, overlay, 0o644)
}

// withTerminal gives a server in this process the built client.
func withTerminal(c *server.Config) { c.Term = os.DirFS(termDir) }

// termPage drives the terminal page in a browser.
type termPage struct {
	t   *testing.T
	ctx context.Context
}

// recorder runs before the page's own scripts: it notes CSP violations
// and every state the page passes through.
const recorder = `
window.__csp = [];
window.__states = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
document.addEventListener("DOMContentLoaded", function () {
  var app = document.getElementById("terminal-app");
  if (!app) return;
  new MutationObserver(function () { window.__states.push(app.getAttribute("data-state")); })
    .observe(app, { attributes: true, attributeFilter: ["data-state"] });
});`

func newTermPage(t *testing.T) *termPage {
	t.Helper()
	p := &termPage{t: t, ctx: browser(t)}
	do(t, p.ctx, "install the recorder", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: recorder})
		return err
	}))
	return p
}

// open loads the page at url and returns the response to its request.
func (p *termPage) open(url string) *network.Response {
	p.t.Helper()
	return get(p.t, p.ctx, "open "+url, chromedp.NavigateResponse(url))
}

// waitState waits until the page is in one of states and returns it.
func (p *termPage) waitState(states ...string) string {
	p.t.Helper()
	js := `(states) => { var s = document.getElementById("terminal-app").getAttribute("data-state"); return states.indexOf(s) >= 0 ? s : ""; }`
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	got, err := chromedp.Run(ctx, chromedp.PollFunction[string](js, chromedp.WithPollingArgs(states)))
	if err != nil {
		p.t.Fatalf("page never reached %v: %v; it is %q: %q", states, err, p.attr("data-state"), p.text("#status"))
	}
	return got
}

func (p *termPage) attr(name string) string {
	return get(p.t, p.ctx, "read "+name, chromedp.Evaluate[string](`document.getElementById("terminal-app").getAttribute("`+name+`") || ""`))
}

func (p *termPage) text(css string) string {
	p.t.Helper()
	return get(p.t, p.ctx, "text of "+css, chromedp.Evaluate[string](`document.querySelector(`+jsString(css)+`).textContent`))
}

// screen is the text xterm.js shows.
func (p *termPage) screen() string {
	p.t.Helper()
	return get(p.t, p.ctx, "read the terminal", chromedp.Evaluate[string](
		`Array.from(document.querySelectorAll("#term .xterm-rows > div")).map(function (d) { return d.textContent.replace(/\u00a0/g, " ").trimEnd(); }).join("\n")`))
}

// waitScreen waits until the terminal shows want.
func (p *termPage) waitScreen(want string) {
	p.t.Helper()
	js := `(want) => Array.from(document.querySelectorAll("#term .xterm-rows > div")).map(function (d) { return d.textContent.replace(/\u00a0/g, " "); }).join("\n").indexOf(want) >= 0`
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.PollFunction[bool](js, chromedp.WithPollingArgs(want))); err != nil {
		p.t.Fatalf("terminal never showed %q (%v); it shows:\n%s", want, err, p.screen())
	}
}

// typeLine types a line into the terminal, which has the focus: the text
// as a keyboard's input events deliver it, then Enter. (chromedp's
// KeyEvent sends each key's char event even when the page cancelled its
// keydown, as xterm.js does, which a real browser never does: every key
// would arrive twice.)
func (p *termPage) typeLine(line string) {
	p.t.Helper()
	enter := input.DispatchKeyEventParams{Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13}
	do(p.t, p.ctx, "type "+line, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		if _, err := chromedp.Call(ctx, input.InsertText, input.InsertTextParams{Text: line}); err != nil {
			return err
		}
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
			enter.Type = typ
			if _, err := chromedp.Call(ctx, input.DispatchKeyEvent, enter); err != nil {
				return err
			}
		}
		return nil
	}))
}

// cspViolations are what the browser blocked under the page's CSP.
func (p *termPage) cspViolations() []string {
	return get(p.t, p.ctx, "read CSP violations", chromedp.Evaluate[[]string](`window.__csp || []`))
}

// states are the states the page went through since it loaded.
func (p *termPage) states() []string {
	return get(p.t, p.ctx, "read states", chromedp.Evaluate[[]string](`window.__states || []`))
}

func jsString(s string) string { b, _ := json.Marshal(s); return string(b) }

// authorizeBrowserKey waits for the page to ask for a login, reads the
// browser's key line and adds it to the agent's .authorized_keys, as a
// user would; it returns the line.
func (p *termPage) authorizeBrowserKey(agentDir string) string {
	p.t.Helper()
	if st := p.waitState("login", "open"); st != "login" {
		p.t.Fatalf("page is %q before its key was authorised; want login", st)
	}
	line := strings.TrimSpace(p.text("#browser-key"))
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err != nil || !strings.HasPrefix(line, "ssh-ed25519 ") {
		p.t.Fatalf("#browser-key shows %q, not an ssh-ed25519 authorized_keys line (%v)", line, err)
	}
	f, err := os.OpenFile(filepath.Join(agentDir, ".authorized_keys"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		p.t.Fatal(err)
	}
	return line
}

// login authorises the browser's key and connects.
func (p *termPage) login(agentDir string) {
	p.t.Helper()
	p.authorizeBrowserKey(agentDir)
	do(p.t, p.ctx, "connect", chromedp.Click(chromedp.CSS("#connect")))
	p.waitState("open")
}

var browserLinkRE = regexp.MustCompile(`or in a browser: (\S+)`)

// browserLink is the terminal link the agent printed, checked to lead to
// r with the agent's host key pinned, and moved to base (a proxy).
func browserLink(t *testing.T, a *runningAgent, r *relay, id, base string) string {
	t.Helper()
	m := browserLinkRE.FindStringSubmatch(a.Out.String())
	want := r.HTTP + "/terminal/" + id + "#fp=" + ssh.FingerprintSHA256(a.HostKey())
	if m == nil || m[1] != want {
		t.Fatalf("agent printed browser link %q, want %q; it printed:\n%s", m, want, a.Out.String())
	}
	return base + strings.TrimPrefix(m[1], r.HTTP)
}

func marker(t *testing.T) string {
	b := make([]byte, 8)
	rand.Read(b)
	return "mark" + hex.EncodeToString(b)
}

// TestTerminalBrowserKeyLogin: a user with only a browser opens the link
// the agent printed, adds the browser's key to the job's keys, and gets a
// shell through the relay; the bytes between browser and relay never
// carry what was typed or shown in clear, and the page runs under its CSP.
func TestTerminalBrowserKeyLogin(t *testing.T) {
	if wasmGzSize > wasmBudget {
		t.Errorf("budget: compressed wasm is %d bytes, over the %d budget", wasmGzSize, wasmBudget)
	}
	t.Logf("budget: compressed wasm %d bytes (budget %d)", wasmGzSize, wasmBudget)
	r := startServer(t, withTerminal)
	capture := startCapture(t, r.Addr)
	a := startAgent(t, r, "browser-key-job", sshtest.New(t), func(cfg *agent.Config) { cfg.Executable = bin("agent") })
	link := browserLink(t, a, r, "browser-key-job", "http://"+capture.Addr())

	p := newTermPage(t)
	resp := p.open(link)
	csp, _ := resp.Headers["Content-Security-Policy"].(string)
	if !strings.Contains(csp, "script-src 'self' 'wasm-unsafe-eval';") || !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("terminal page CSP %q, want script-src 'self' 'wasm-unsafe-eval' and default-src 'self'", csp)
	}
	p.login(a.Dir)

	mark := marker(t)
	p.typeLine("echo " + mark + "-$((6*7))")
	p.waitScreen(mark + "-42")
	// The journal says the login came through the browser, and the
	// converge command works in the browser's shell too.
	var way string
	for _, e := range a.Journal().Entries() {
		if e.Kind == journal.KindLogin {
			way = e.Login.Way
		}
	}
	if way != journal.WayBrowser {
		t.Errorf("the journal's way in for the browser's login: %q, want %q", way, journal.WayBrowser)
	}
	p.typeLine("converge who")
	p.waitScreen("(you)")
	if v := p.cspViolations(); len(v) > 0 {
		t.Errorf("the page broke its CSP: %q", v)
	}

	// A second visit, warm: the key is known, so the page logs in by itself.
	p.open("about:blank")
	p.open(link)
	p.waitState("open")
	ms := get(t, p.ctx, "time to first output", chromedp.Poll[string](`document.getElementById("terminal-app").getAttribute("data-first-output-ms")`))
	t.Logf("budget: page load to first shell output, warm cache: %s ms (budget %d ms)", ms, loadBudget)
	t.Logf("page timeline (ms): %s", get(t, p.ctx, "timeline", chromedp.Evaluate[string](
		`performance.getEntries().filter(function (e) { return e.entryType === "mark" || /wasm|\.js/.test(e.name); }).map(function (e) { return e.name.replace(/^.*\//, "") + " " + Math.round(e.startTime) + "+" + Math.round(e.duration); }).join(", ")`)))

	capture.check(t, mark)
}

// TestTerminalHostKeyPinning: a wrong pinned fingerprint is refused
// before any login, with no shell; without a pin the page shows the
// agent's fingerprint and goes on only when the user says it matches;
// then a key file picked by the user logs in.
func TestTerminalHostKeyPinning(t *testing.T) {
	r := startServer(t, withTerminal)
	c := sshtest.New(t)
	a := startAgent(t, r, "pinned-job", c)
	p := newTermPage(t)

	other := ssh.FingerprintSHA256(otherKey(t))
	p.open(r.HTTP + "/terminal/pinned-job#fp=" + other)
	p.waitState("refused")
	if why := p.text("#refused-why"); !strings.Contains(why, ssh.FingerprintSHA256(a.HostKey())) || !strings.Contains(why, other) {
		t.Errorf("refusal says %q; want both fingerprints", why)
	}
	hidden := get(t, p.ctx, "terminal hidden", chromedp.Evaluate[bool](`document.getElementById("term").hidden && document.getElementById("connect").hidden`))
	if !hidden || strings.TrimSpace(p.screen()) != "" {
		t.Errorf("a refused page shows a terminal or a connect button (hidden %v); screen:\n%s", hidden, p.screen())
	}
	for _, st := range p.states() {
		if st == "open" || st == "login" {
			t.Errorf("a refused page went through state %q", st)
		}
	}

	p.open(r.HTTP + "/terminal/pinned-job")
	p.waitState("verify")
	fp := strings.TrimSpace(p.text("#host-fp"))
	if fp != ssh.FingerprintSHA256(a.HostKey()) {
		t.Fatalf("page shows host key %q, want the agent's %q", fp, ssh.FingerprintSHA256(a.HostKey()))
	}
	do(t, p.ctx, "trust the key", chromedp.Click(chromedp.CSS("#trust")))
	p.waitState("login")
	if h := get(t, p.ctx, "fragment", chromedp.Evaluate[string](`location.hash`)); h != "#fp="+fp {
		t.Errorf("after trusting, the URL fragment is %q, want #fp=%s", h, fp)
	}

	do(t, p.ctx, "pick a key file", chromedp.SetUploadFiles(chromedp.CSS("#key-file"), []string{c.KeyFile}))
	get(t, p.ctx, "the key file is read", chromedp.Poll[bool](`document.getElementById("key-file").files.length === 1`))
	do(t, p.ctx, "connect with it", chromedp.Click(chromedp.CSS("#connect")))
	p.waitState("open")
	p.typeLine("echo file-$((7*6))")
	p.waitScreen("file-42")
}

func otherKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sshtest.New(t).PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var sttyRE = regexp.MustCompile(`(?m)^(\d+) (\d+)$`)

// sttySize runs stty size in the page's shell and returns what it says.
func (p *termPage) sttySize(tag string) string {
	p.t.Helper()
	p.typeLine("clear; stty size; echo " + tag + "-$((1+1))")
	p.waitScreen(tag + "-2")
	m := sttyRE.FindAllStringSubmatch(p.screen(), -1)
	if m == nil {
		p.t.Fatalf("no stty size output:\n%s", p.screen())
	}
	return m[len(m)-1][0]
}

// TestTerminalResize: the PTY follows the browser window's size; the
// shell's end is shown.
func TestTerminalResize(t *testing.T) {
	r := startServer(t, withTerminal)
	a := startAgent(t, r, "resize-job", sshtest.New(t))
	p := newTermPage(t)
	p.open(browserLink(t, a, r, "resize-job", r.HTTP))
	p.login(a.Dir)
	before := p.sttySize("one")
	rows := `document.querySelectorAll("#term .xterm-rows > div").length`
	was := get(t, p.ctx, "rows", chromedp.Evaluate[int](rows))
	do(t, p.ctx, "shrink the window", chromedp.EmulateViewport(700, 480))
	get(t, p.ctx, "xterm.js follows", chromedp.Poll[bool](rows+" < "+strconv.Itoa(was)))
	// The window-change request and the next command travel separately
	// inside the agent; give the PTY a moment to apply it.
	after := before
	for try := 0; try < 5 && after == before; try++ {
		after = p.sttySize("after" + strconv.Itoa(try))
	}
	if before == after {
		t.Errorf("stty size %q before and after the window shrank; want a change", before)
	}
	if now := get(t, p.ctx, "rows", chromedp.Evaluate[int](rows)); !strings.HasPrefix(after, strconv.Itoa(now)+" ") {
		t.Errorf("stty size %q after the shrink, but xterm.js shows %d rows", after, now)
	}
	t.Logf("stty size %s, then %s", before, after)

	// The session's end is shown, with a way to start another.
	p.typeLine("exit 7")
	p.waitState("ended")
	p.waitScreen("Session ended: exit status 7")
	if st, btn := p.text("#status"), p.text("#connect"); !strings.Contains(st, "exit status 7") || btn != "New session" {
		t.Errorf("after exit 7: status %q, button %q", st, btn)
	}
}

// TestTerminalSurvivesServerKill: kill -9 and restart the server while a
// command runs in the browser's shell; its output completes.
func TestTerminalSurvivesServerKill(t *testing.T) {
	rig := newResumeRig(t, "phoenix-term")
	p := newTermPage(t)
	p.open("http://" + rig.clientProxy.Addr() + "/terminal/phoenix-term#fp=" + ssh.FingerprintSHA256(rig.agent.HostKey()))
	p.login(rig.agent.Dir)
	if mode := p.text("#status"); !strings.Contains(mode, "pauses") {
		t.Fatalf("status %q: the stream is not resumable", mode)
	}
	p.typeLine("clear; for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.4; done; echo finished-$((40+2))")
	p.waitScreen("tick-2")
	rig.restartServer()
	p.waitScreen("finished-42")
	screen := p.screen()
	for i := 1; i <= 8; i++ {
		if !strings.Contains(screen, fmt.Sprintf("tick-%d\n", i)) {
			t.Errorf("tick-%d is missing after the restart:\n%s", i, screen)
		}
	}
	paused := false
	for _, st := range p.states() {
		paused = paused || st == "paused"
	}
	if !paused {
		t.Errorf("the page never showed the pause; states %q", p.states())
	}
	if st := p.waitState("open"); st != "open" {
		t.Errorf("state after the restart: %q", st)
	}
}

// captureProxy is a TCP proxy that keeps every byte it forwards: what a
// relay, or anyone on the path, sees.
type captureProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*capturedConn
	open  map[net.Conn]struct{}
}

type capturedConn struct {
	up, down bytes.Buffer // browser → server, server → browser
}

func startCapture(t *testing.T, target string) *captureProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &captureProxy{ln: ln, target: target, open: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *captureProxy) Addr() string { return p.ln.Addr().String() }

func (p *captureProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		cc := &capturedConn{}
		p.mu.Lock()
		p.conns = append(p.conns, cc)
		p.open[c], p.open[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(s, c, &cc.up)
		go p.pipe(c, s, &cc.down)
	}
}

// pipe copies from src to dst, keeping a copy; the first side to end
// closes both.
func (p *captureProxy) pipe(dst, src net.Conn, keep *bytes.Buffer) {
	defer p.wg.Done()
	io.Copy(dst, io.TeeReader(src, lockedWriter{&p.mu, keep}))
	dst.Close()
	src.Close()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(b)
}

func (p *captureProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// check fails the test when mark appears in clear in any byte the proxy
// saw, either way. Browsers mask what they send in WebSocket frames, so
// the frames of a client connection are unmasked first, as the relay
// sees them. The SSH version banners, the only clear text SSH sends,
// prove that the capture and the unmasking work.
func (p *captureProxy) check(t *testing.T, mark string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var up, down, relayed []byte
	for _, c := range p.conns {
		up = append(up, c.up.Bytes()...)
		down = append(down, c.down.Bytes()...)
		relayed = append(relayed, clientPayloads(c.up.Bytes())...)
	}
	for _, s := range []struct {
		name string
		b    []byte
	}{{"browser to server, raw", up}, {"browser to server, unmasked", relayed}, {"server to browser", down}} {
		if bytes.Contains(s.b, []byte(mark)) {
			t.Errorf("%s (%d bytes) carries the typed marker %q in clear", s.name, len(s.b), mark)
		}
	}
	if !bytes.Contains(relayed, []byte("SSH-2.0-")) || !bytes.Contains(down, []byte("SSH-2.0-")) {
		t.Errorf("capture lacks the SSH banners (unmasked up %d bytes, down %d): it saw nothing of the session", len(relayed), len(down))
	}
}

// clientPayloads returns the unmasked payloads of the WebSocket frames a
// browser sent on a connection, after its upgrade to /client/ID.
func clientPayloads(b []byte) []byte {
	i := bytes.Index(b, []byte("GET /client/"))
	if i < 0 {
		return nil
	}
	j := bytes.Index(b[i:], []byte("\r\n\r\n"))
	if j < 0 {
		return nil
	}
	b = b[i+j+4:]
	var out []byte
	for len(b) >= 2 {
		n, h := uint64(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return out
			}
			n, h = uint64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return out
			}
			n, h = binary.BigEndian.Uint64(b[2:]), 10
		}
		var key []byte
		if b[1]&0x80 != 0 {
			if len(b) < h+4 {
				return out
			}
			key, h = b[h:h+4], h+4
		}
		if uint64(len(b)-h) < n {
			return out
		}
		payload := append([]byte(nil), b[h:h+int(n)]...)
		for k := range payload {
			if key != nil {
				payload[k] ^= key[k%4]
			}
		}
		out = append(out, payload...)
		b = b[h+int(n):]
	}
	return out
}
