package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// bigFile writes size random bytes with mark inside, streaming, and
// returns the SHA-256 in hex.
func bigFile(t *testing.T, path string, size int64, mark string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	io.WriteString(w, mark)
	if _, err := io.CopyN(w, rand.Reader, size-int64(2*len(mark))); err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, mark)
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// waitJS polls a JavaScript condition for up to limit.
func (p *termPage) waitJS(what, cond string, limit time.Duration) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, limit)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond)); err != nil {
		p.t.Fatalf("%s: %v; transfers: %q; status %q", what, err, p.text("#transfers"), p.text("#status"))
	}
}

// transfer is the CSS of the newest transfer row of kind for name.
func transfer(kind, name string) string {
	return `Array.from(document.querySelectorAll('#transfers .transfer[data-kind="` + kind + `"][data-name="` + name + `"]')).pop()`
}

// upload picks files with the page's upload input and waits until the
// newest row for the first one is in one of states.
func (p *termPage) upload(path string, limit time.Duration, states ...string) string {
	p.t.Helper()
	do(p.t, p.ctx, "pick "+path, chromedp.SetUploadFiles(chromedp.CSS("#upload-input"), []string{path}))
	row := transfer("upload", filepath.Base(path))
	p.waitJS("upload of "+path, `(function () { var r = `+row+`; return !!r && `+jsString(strings.Join(states, " "))+`.split(" ").indexOf(r.getAttribute("data-state")) >= 0; })()`, limit)
	return get(p.t, p.ctx, "upload state", chromedp.Evaluate[string](row+`.getAttribute("data-state")`))
}

// TestTerminalUpload: files picked in the page land in the shell's
// directory (tracked by OSC 7) over SFTP inside the page's SSH
// connection: the relay never sees their bytes in clear; an existing
// file is kept beside or skipped as the user says; a 100 MiB file lands
// whole, streamed, with the same SHA-256.
func TestTerminalUpload(t *testing.T) {
	r := startServer(t, withTerminal)
	capture := startCapture(t, r.Addr)
	c := sshtest.New(t)
	a := startAgent(t, r, "upload-job", c)
	p := newTermPage(t)
	p.open(browserLink(t, a, r, "upload-job", "http://"+capture.Addr()))
	p.login(a.Dir)

	p.typeLine("mkdir -p inbox && cd inbox && echo in-$((1+1))")
	p.waitScreen("in-2")
	inbox := filepath.Join(a.Dir, "inbox")
	p.waitJS("the page follows the shell's directory", `document.getElementById("terminal-app").getAttribute("data-cwd") === `+jsString(inbox), 20*time.Second)

	mark := marker(t)
	src := t.TempDir()
	small := filepath.Join(src, "small.bin")
	sum := bigFile(t, small, 3<<20, mark)
	if st := p.upload(small, 30*time.Second, "done", "failed"); st != "done" {
		t.Fatalf("upload ended %q: %s", st, p.text("#transfers"))
	}
	if got := fileSum(t, filepath.Join(inbox, "small.bin")); got != sum {
		t.Errorf("uploaded file's SHA-256 %s, want %s", got, sum)
	}
	if where := p.text("#upload-where"); !strings.Contains(where, "shell's directory: "+inbox) {
		t.Errorf("the page says %q about where files go", where)
	}

	p.checkConflictsAndDrop(small, inbox, mark)
	capture.check(t, mark)

	p.uploadBig(r, a, c, src, inbox)
}

// checkConflictsAndDrop uploads small to inbox again twice, keeping both
// then skipping, and drops a file on the terminal.
func (p *termPage) checkConflictsAndDrop(small, inbox, mark string) {
	t := p.t
	t.Helper()
	// The page asks; keep both, then skip.
	for _, choice := range []string{"keep", "skip"} {
		p.upload(small, 30*time.Second, "ask")
		do(t, p.ctx, choice, chromedp.Click(chromedp.CSS(`#transfers .transfer:last-child [data-choice="`+choice+`"]`)))
		p.waitJS("after "+choice, `["done", "skipped"].indexOf(`+transfer("upload", "small.bin")+`.getAttribute("data-state")) >= 0`, 30*time.Second)
	}
	ents, _ := os.ReadDir(inbox)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "small (1).bin,small.bin" {
		t.Errorf("inbox holds %q after keep both and skip; want small.bin and small (1).bin", names)
	}
	// A file dropped on the terminal.
	do(t, p.ctx, "drop a file", chromedp.Evaluate[chromedp.Void](`(function () {
  var dt = new DataTransfer();
  dt.items.add(new File(["dropped-`+mark+`"], "dropped.txt"));
  document.getElementById("term").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
})()`))
	p.waitJS("the dropped file lands", `(function () { var r = `+transfer("upload", "dropped.txt")+`; return !!r && r.getAttribute("data-state") === "done"; })()`, 30*time.Second)
	if got, _ := os.ReadFile(filepath.Join(inbox, "dropped.txt")); string(got) != "dropped-"+mark {
		t.Errorf("dropped file holds %q", got)
	}
}

// uploadBig cancels a 100 MiB upload half way, then uploads it whole
// straight to the relay (the capture proxy keeps every byte), and
// measures it against OpenSSH's sftp put.
func (p *termPage) uploadBig(r *relay, a *runningAgent, c *sshtest.Client, src, inbox string) {
	t := p.t
	t.Helper()
	big := filepath.Join(src, "big.bin")
	bigSum := bigFile(t, big, 100<<20, marker(t))
	p.open(r.HTTP + "/terminal/upload-job#fp=" + hostPin(a))
	p.login(a.Dir) // another origin: another browser key
	p.typeLine("cd inbox && echo back-$((2+2))")
	p.waitScreen("back-4")
	p.waitJS("the page follows the shell's directory", `document.getElementById("terminal-app").getAttribute("data-cwd") === `+jsString(inbox), 20*time.Second)
	// Cancelled half way: nothing is left in the job.
	p.upload(big, time.Minute, "running")
	// Click Cancel from inside the page once 4 MiB are sent: a click from
	// here could come after the last byte on a fast machine (or a slow
	// test), and find no Cancel button left.
	p.waitJS("the upload under way, then Cancel", `(function () {
  var r = `+transfer("upload", "big.bin")+`;
  if (!r) return false;
  var b = r.querySelector(".cancel");
  if (b && Number(r.getAttribute("data-bytes") || 0) > (4 << 20)) { b.click(); return true; }
  return r.getAttribute("data-state") === "done";
})()`, time.Minute)
	p.waitJS("the upload stops", transfer("upload", "big.bin")+`.getAttribute("data-state") === "cancelled"`, time.Minute)
	if ents, _ := os.ReadDir(inbox); len(ents) != 3 {
		t.Errorf("after a cancelled upload the inbox holds %v, want the 3 files from before", ents)
	}

	start := time.Now()
	if st := p.upload(big, 5*time.Minute, "done", "failed"); st != "done" {
		t.Fatalf("100 MiB upload ended %q: %s", st, p.text("#transfers"))
	}
	took := time.Since(start)
	if got := fileSum(t, filepath.Join(inbox, "big.bin")); got != bigSum {
		t.Errorf("100 MiB upload's SHA-256 %s, want %s", got, bigSum)
	}
	mem := get(t, p.ctx, "wasm memory", chromedp.Evaluate[float64](`window.convergeWasmMemory.buffer.byteLength`))
	t.Logf("measure: browser upload of 100 MiB: %v, %.1f MiB/s; the client's wasm memory after it: %.0f MiB", took.Round(time.Millisecond), 100/took.Seconds(), mem/(1<<20))

	// OpenSSH's sftp put of the same file on the same loopback path.
	start = time.Now()
	res := c.Run("sftp", r.target("upload-job"), "put "+big+" openssh.bin\n", "-b", "-", r.target("upload-job").Dest())
	if res.Code != 0 {
		t.Fatalf("sftp put: %d\n%s", res.Code, res.Stderr)
	}
	sftpTook := time.Since(start)
	t.Logf("measure: OpenSSH sftp put of 100 MiB: %v, %.1f MiB/s; the browser reached %.0f%% of it",
		sftpTook.Round(time.Millisecond), 100/sftpTook.Seconds(), 100*sftpTook.Seconds()/took.Seconds())
}

func hostPin(a *runningAgent) string { return ssh.FingerprintSHA256(a.HostKey()) }

// insertText types text as a keyboard's input events deliver it.
func (p *termPage) insertText(text string) {
	p.t.Helper()
	do(p.t, p.ctx, "type "+text, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Call(ctx, input.InsertText, input.InsertTextParams{Text: text})
		return err
	}))
}

// offerGet prints the sequence `converge get` prints for path, as the
// shell's printf, and saves the offer the page shows.
func (p *termPage) offerGet(path string) {
	p.t.Helper()
	p.typeLine("converge get " + path)
	row := transfer("download", filepath.Base(path))
	p.waitJS("the offer of "+path, `(function () { var r = `+row+`; return !!r && r.getAttribute("data-state") === "ask"; })()`, 20*time.Second)
	do(p.t, p.ctx, "save", chromedp.Click(chromedp.CSS(`#transfers .transfer:last-child [data-choice="save"]`)))
}

// waitDownload waits for the browser to finish saving name into dir.
func waitDownload(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() == size {
			return path
		}
		if time.Now().After(deadline) {
			ents, _ := os.ReadDir(dir)
			t.Fatalf("the browser never saved %s (%d bytes); the folder holds %v", name, size, ents)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTerminalDownload: the sequence `converge get` prints makes the page
// offer the file; saved, it streams over SFTP inside the page's SSH
// connection to the browser's downloads (a service worker, under the
// strict CSP): the same SHA-256 for 100 MiB, with the client's memory
// measured, and nothing of the file in clear on the way.
func TestTerminalDownload(t *testing.T) {
	r := startServer(t, withTerminal)
	capture := startCapture(t, r.Addr)
	a := startAgent(t, r, "download-job", sshtest.New(t), func(cfg *agent.Config) { cfg.Executable = bin("agent") })
	p := newTermPage(t)
	saved := t.TempDir()
	do(t, p.ctx, "allow downloads", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Call(ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllow, DownloadPath: saved})
		return err
	}))
	mark := marker(t)
	sum := bigFile(t, filepath.Join(a.Dir, "small.bin"), 2<<20, mark)
	p.open(browserLink(t, a, r, "download-job", "http://"+capture.Addr()))
	p.login(a.Dir)
	p.offerGet("small.bin")
	if got := fileSum(t, waitDownload(t, saved, "small.bin", 2<<20)); got != sum {
		t.Errorf("downloaded small.bin's SHA-256 %s, want %s", got, sum)
	}
	p.waitJS("the row says done", transfer("download", "small.bin")+`.getAttribute("data-state") === "done"`, 20*time.Second)
	capture.check(t, mark)

	const size = 100 << 20
	bigSum := bigFile(t, filepath.Join(a.Dir, "big.bin"), size, marker(t))
	p.open(r.HTTP + "/terminal/download-job#fp=" + hostPin(a))
	p.login(a.Dir) // another origin: another browser key
	before := get(t, p.ctx, "wasm memory", chromedp.Evaluate[float64](`window.convergeWasmMemory.buffer.byteLength`))
	start := time.Now()
	p.offerGet("$PWD/big.bin")
	got := fileSum(t, waitDownload(t, saved, "big.bin", size))
	took := time.Since(start)
	if got != bigSum {
		t.Errorf("100 MiB download's SHA-256 %s, want %s", got, bigSum)
	}
	after := get(t, p.ctx, "wasm memory", chromedp.Evaluate[float64](`window.convergeWasmMemory.buffer.byteLength`))
	heap := get(t, p.ctx, "JS heap", chromedp.Evaluate[float64](`performance.memory ? performance.memory.usedJSHeapSize : 0`))
	t.Logf("measure: browser download of 100 MiB: %v, %.1f MiB/s; wasm memory %.0f → %.0f MiB; page JS heap %.0f MiB",
		took.Round(time.Millisecond), size/(1<<20)/took.Seconds(), before/(1<<20), after/(1<<20), heap/(1<<20))
	if after-before >= size/2 {
		t.Errorf("the client's memory grew by %.0f MiB for a 100 MiB download: it is not streamed", (after-before)/(1<<20))
	}
	if v := p.cspViolations(); len(v) > 0 {
		t.Errorf("the page broke its CSP: %q", v)
	}
}

// TestTerminalClipboardAndPhone: OSC 52 from the job lands in the
// browser's clipboard; a long paste asks first; on a phone-sized touch
// screen the key bar shows, the page fits, and Ctrl then c sends 0x03.
func TestTerminalClipboardAndPhone(t *testing.T) {
	r := startServer(t, withTerminal)
	a := startAgent(t, r, "phone-job", sshtest.New(t))
	p := newTermPage(t)
	do(t, p.ctx, "grant the clipboard", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		for _, name := range []string{"clipboard-read", "clipboard-write"} {
			_, err := chromedp.Call(ctx, cdpbrowser.SetPermission, cdpbrowser.SetPermissionParams{
				Permission: &cdpbrowser.PermissionDescriptor{Name: name, AllowWithoutSanitization: true}, Setting: cdpbrowser.PermissionSettingGranted, Origin: r.HTTP})
			if err != nil {
				return err
			}
		}
		return nil
	}))
	p.open(browserLink(t, a, r, "phone-job", r.HTTP))
	p.login(a.Dir)

	mark := marker(t)
	p.typeLine(`printf '\033]52;c;%s\007' "$(printf %s clip-` + mark + ` | base64 -w0)"`)
	p.waitJS("the page copies", `document.getElementById("terminal-app").hasAttribute("data-copied")`, 20*time.Second)
	clip := get(t, p.ctx, "read the clipboard", chromedp.Evaluate[string](`navigator.clipboard.readText()`, chromedp.EvalAwaitPromise))
	if clip != "clip-"+mark {
		t.Errorf("clipboard holds %q, want %q", clip, "clip-"+mark)
	}
	// A read request (Pc;?) is never answered.
	p.typeLine(`printf '\033]52;c;?\007'; echo asked-$((3+3))`)
	p.waitScreen("asked-6")
	if _, after, _ := strings.Cut(p.screen(), "asked-6"); strings.Contains(after, "52;") {
		t.Errorf("the page answered a clipboard read:\n%s", p.screen())
	}

	p.checkPasteGuard()
	p.checkPhone()
	if v := p.cspViolations(); len(v) > 0 {
		t.Errorf("the page broke its CSP: %q", v)
	}
}

// TestTerminalUploadSurvivesCut: the network between the page and the
// relay is cut for 5 s in the middle of an upload; the resumable stream
// carries the same SFTP transfer on over a new link, and the file lands
// whole.
func TestTerminalUploadSurvivesCut(t *testing.T) {
	r := startServer(t, withTerminal)
	cut := newProxy(t, r.Addr)
	a := startAgent(t, r, "cut-job", sshtest.New(t))
	p := newTermPage(t)
	p.open(browserLink(t, a, r, "cut-job", "http://"+cut.Addr()))
	p.login(a.Dir)
	if mode := p.text("#status"); !strings.Contains(mode, "pauses") {
		t.Fatalf("status %q: the stream is not resumable", mode)
	}
	big := filepath.Join(t.TempDir(), "cut.bin")
	sum := bigFile(t, big, 100<<20, marker(t))
	do(t, p.ctx, "pick "+big, chromedp.SetUploadFiles(chromedp.CSS("#upload-input"), []string{big}))
	row := transfer("upload", "cut.bin")
	p.waitJS("the upload is under way", `(function () { var r = `+row+`; return !!r && Number(r.getAttribute("data-bytes") || 0) > (8 << 20); })()`, time.Minute)
	cut.Pause()
	cut.Cut()
	at := get(t, p.ctx, "bytes at the cut", chromedp.Evaluate[float64](`Number(`+row+`.getAttribute("data-bytes"))`))
	time.Sleep(5 * time.Second) // the outage itself, not a wait for a condition
	cut.Resume()
	p.waitJS("the upload ends", `["done", "failed", "cancelled"].indexOf(`+row+`.getAttribute("data-state")) >= 0`, 5*time.Minute)
	if st := get(t, p.ctx, "state", chromedp.Evaluate[string](row+`.getAttribute("data-state")`)); st != "done" {
		t.Fatalf("upload after a 5 s cut at %.0f MiB ended %q: %s", at/(1<<20), st, p.text("#transfers"))
	}
	if got := fileSum(t, filepath.Join(a.Dir, "cut.bin")); got != sum {
		t.Errorf("SHA-256 after the cut %s, want %s", got, sum)
	}
	paused := false
	for _, st := range p.states() {
		paused = paused || st == "paused"
	}
	if !paused {
		t.Errorf("the page never paused: the cut did not happen during the upload (states %q)", p.states())
	}
	t.Logf("cut for 5 s at %.0f MiB of 100; the upload completed", at/(1<<20))
}

// checkPasteGuard: two pasted lines go straight in; eight ask first.
func (p *termPage) checkPasteGuard() {
	t := p.t
	t.Helper()
	paste := func(text string) {
		do(t, p.ctx, "paste", chromedp.Evaluate[chromedp.Void](`(function () {
  var dt = new DataTransfer(); dt.setData("text/plain", `+jsString(text)+`);
  document.querySelector("#term textarea").dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
})()`))
	}
	// bash takes a paste bracketed, and runs it at the next Enter.
	paste("echo short-$((1+1))\necho short-$((1+2))")
	p.typeLine("")
	p.waitScreen("short-3")
	var long []string
	for i := 1; i <= 8; i++ {
		long = append(long, "echo long-$(("+strconv.Itoa(i)+"*10))")
	}
	paste(strings.Join(long, "\n"))
	p.waitJS("the page asks before a long paste", `!document.getElementById("paste-ask").hidden`, 10*time.Second)
	if strings.Contains(p.screen(), "long-10") {
		t.Errorf("a long paste ran before the user said yes:\n%s", p.screen())
	}
	do(t, p.ctx, "say yes", chromedp.Click(chromedp.CSS("#paste-yes")))
	p.typeLine("")
	p.waitScreen("long-80")
}

// checkPhone: on a 390×844 touch screen the key bar shows, the page fits,
// and Ctrl (held from the bar) then c sends 0x03.
func (p *termPage) checkPhone() {
	t := p.t
	t.Helper()
	do(t, p.ctx, "a phone's screen", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateTouch, chromedp.EmulatePortrait))
	p.waitJS("the key bar shows", `getComputedStyle(document.getElementById("keybar")).display !== "none"`, 10*time.Second)
	// The terminal follows the new width (xterm.js refits on a resize).
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.documentElement.scrollWidth <= 390`))
	cancel()
	if err != nil {
		t.Errorf("the page is %d px wide on a 390 px screen; wider: %s", get(t, p.ctx, "width", chromedp.Evaluate[int](`document.documentElement.scrollWidth`)),
			get(t, p.ctx, "wide", chromedp.Evaluate[string](
				`Array.from(document.querySelectorAll("body *")).filter(function (e) { return e.getBoundingClientRect().right > 392; }).slice(0, 8).map(function (e) { return e.tagName + "#" + e.id + "." + e.className + " " + Math.round(e.getBoundingClientRect().right); }).join(", ")`)))
	}
	p.typeLine("clear; stty raw -echo; echo raw-$((4+4)); dd bs=1 count=1 2>/dev/null | od -An -tx1; stty sane; echo sane-$((5+5))")
	p.waitScreen("raw-8")
	do(t, p.ctx, "tap Ctrl", chromedp.Click(chromedp.CSS(`#keybar [data-key="ctrl"]`)))
	if pressed := get(t, p.ctx, "ctrl held", chromedp.Evaluate[string](`document.querySelector('#keybar [data-key="ctrl"]').getAttribute("aria-pressed")`)); pressed != "true" {
		t.Errorf("Ctrl after a tap: aria-pressed %q", pressed)
	}
	p.insertText("c")
	p.waitScreen("sane-10")
	if !strings.Contains(p.screen(), " 03") {
		t.Errorf("Ctrl then c did not send 0x03:\n%s", p.screen())
	}
}
