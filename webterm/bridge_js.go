//go:build js && wasm

package webterm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall/js"
	"time"

	"golang.org/x/crypto/ssh"
)

// Export installs the terminal's API for the page as
// globalThis.convergeWebterm and, when the page has set
// globalThis.convergeWebtermReady, calls it with the API:
//
//	keyLine(publicKey: Uint8Array, comment: string): string
//	    the authorized_keys line of the browser's raw Ed25519 public key
//	connect(opts): handle
//	    opts: url (ws[s]://host/client/ID), user, pin ("SHA256:…" or ""),
//	    cols, rows, browserKey ({publicKey, sign} or null), keyFile
//	    (Uint8Array or null), passphrase, password, and the callbacks
//	    onState(state, detail)  "open" (detail "resumable" or "plain"),
//	                            "paused", "resumed"
//	    onData(bytes, done)     output; call done() once it is shown
//	    onEnd(kind, message, detail)  once, at the end (see endOf)
//	handle: write(text), resize(cols, rows), check(), close(), and the
//	file methods (see fileMethods)
//
// The functions stay installed for the life of the page.
func Export() {
	api := js.Global().Get("Object").New()
	api.Set("keyLine", js.FuncOf(keyLine))
	api.Set("connect", js.FuncOf(func(_ js.Value, args []js.Value) any {
		return newHandle(arg(args, 0)).js()
	}))
	js.Global().Set("convergeWebterm", api)
	if ready := js.Global().Get("convergeWebtermReady"); ready.Type() == js.TypeFunction {
		ready.Invoke(api)
	}
}

func keyLine(_ js.Value, args []js.Value) any {
	pub, err := browserPublicKey(arg(args, 0))
	if err != nil {
		return js.Null()
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	if c := arg(args, 1); c.Type() == js.TypeString && c.String() != "" {
		line += " " + c.String()
	}
	return line
}

// handle is one connection attempt and, once logged in, its session. The
// page owns it: close cancels everything it runs. Its functions are
// released once the page has been told the end (it then drops the handle).
type handle struct {
	opts   js.Value
	ctx    context.Context
	cancel context.CancelFunc
	funcs  []js.Func

	mu      sync.Mutex
	sess    *Session
	input   []byte
	size    [2]int // latest cols, rows asked for
	resized bool
	ended   bool
	wake    chan struct{} // input or a resize is waiting
}

func newHandle(opts js.Value) *handle {
	h := &handle{opts: opts, wake: make(chan struct{}, 1)}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	go h.run()
	return h
}

// js is the handle as the page sees it. Its functions never block.
func (h *handle) js() js.Value {
	o := js.Global().Get("Object").New()
	h.method(o, "write", func(args []js.Value) {
		h.mu.Lock()
		h.input = append(h.input, arg(args, 0).String()...)
		h.mu.Unlock()
		h.poke()
	})
	h.method(o, "resize", func(args []js.Value) {
		h.mu.Lock()
		h.size, h.resized = [2]int{arg(args, 0).Int(), arg(args, 1).Int()}, true
		h.mu.Unlock()
		h.poke()
	})
	h.method(o, "check", func([]js.Value) {
		if s := h.session(); s != nil {
			s.Check(3 * time.Second)
		}
	})
	h.method(o, "close", func([]js.Value) { h.cancel() })
	h.fileMethods(o)
	return o
}

func (h *handle) method(o js.Value, name string, fn func([]js.Value)) {
	f := js.FuncOf(func(_ js.Value, args []js.Value) any { fn(args); return nil })
	h.funcs = append(h.funcs, f)
	o.Set(name, f)
}

func (h *handle) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *handle) session() *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sess
}

// call invokes one of the page's callbacks, unless the session is over.
func (h *handle) call(name string, args ...any) {
	h.mu.Lock()
	ended := h.ended
	h.mu.Unlock()
	if f := h.opts.Get(name); !ended && f.Type() == js.TypeFunction {
		f.Invoke(args...)
	}
}

// end reports the outcome once; later callbacks are dropped.
func (h *handle) end(kind, message, detail string) {
	h.call("onEnd", kind, message, detail)
	h.mu.Lock()
	h.ended = true
	h.mu.Unlock()
}

// run connects, pumps the session, and reports how it ended.
func (h *handle) run() {
	defer h.release()
	defer h.cancel()
	cfg, err := h.config()
	if err != nil {
		h.end(endOf(err))
		return
	}
	sess, err := Start(h.ctx, DialWebSocket(h.opts.Get("url").String()), cfg)
	if err != nil {
		h.end(endOf(err))
		return
	}
	h.mu.Lock()
	h.sess = sess
	h.mu.Unlock()
	stop := context.AfterFunc(h.ctx, func() { sess.Close() })
	mode := "plain"
	if sess.Resumable() {
		mode = "resumable"
	}
	h.call("onState", "open", mode)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); h.pumpInput(sess) }()
	h.pumpOutput(sess)
	why := exitReason(sess.Wait(), h.ctx.Err())
	stop()
	h.cancel() // ends pumpInput
	wg.Wait()
	sess.Close()
	h.end(endOf(why))
}

// release frees the handle's functions; the page no longer calls them.
func (h *handle) release() {
	for _, f := range h.funcs {
		f.Release()
	}
}

// config turns the page's options into a Config.
func (h *handle) config() (Config, error) {
	o := h.opts
	cfg := Config{
		Pin:   o.Get("pin").String(),
		Login: Login{User: o.Get("user").String(), Password: str(o.Get("password"))},
		Cols:  num(o.Get("cols")), Rows: num(o.Get("rows")),
		Command: str(o.Get("command")),
		OnPause: func(paused bool) {
			if paused {
				h.call("onState", "paused", "")
			} else {
				h.call("onState", "resumed", "")
			}
		},
	}
	if k := o.Get("browserKey"); k.Truthy() {
		s, err := browserSigner(k)
		if err != nil {
			return cfg, err
		}
		cfg.Login.Signers = append(cfg.Login.Signers, s)
	}
	if f := o.Get("keyFile"); f.Truthy() {
		s, err := ParseKeyFile(bytesFromJS(f), str(o.Get("passphrase")))
		if err != nil {
			return cfg, err
		}
		cfg.Login.Signers = append(cfg.Login.Signers, s)
	}
	return cfg, nil
}

func str(v js.Value) string {
	if v.Type() != js.TypeString {
		return ""
	}
	return v.String()
}

func num(v js.Value) int {
	if v.Type() != js.TypeNumber {
		return 0
	}
	return v.Int()
}

// pumpOutput hands the shell's output to the page, a chunk at a time,
// waiting until xterm.js has taken each one: the backpressure reaches the
// agent through SSH's window.
func (h *handle) pumpOutput(sess *Session) {
	taken := make(chan struct{}, 1)
	done := js.FuncOf(func(js.Value, []js.Value) any {
		select {
		case taken <- struct{}{}:
		default:
		}
		return nil
	})
	buf := make([]byte, 32<<10)
	for {
		n, err := sess.Read(buf)
		if n > 0 {
			h.call("onData", bytesToJS(buf[:n]), done)
			select {
			case <-taken:
			case <-h.ctx.Done():
				return // xterm.js may still call done: keep it
			}
		}
		if err != nil {
			done.Release()
			return
		}
	}
}

// pumpInput sends what the user typed, and the latest terminal size,
// until the session ends.
func (h *handle) pumpInput(sess *Session) {
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-h.wake:
		}
		h.mu.Lock()
		in, size, resized := h.input, h.size, h.resized
		h.input, h.resized = nil, false
		h.mu.Unlock()
		if resized {
			sess.Resize(size[0], size[1])
		}
		if len(in) > 0 {
			if _, err := sess.Write(in); err != nil {
				return
			}
		}
	}
}

// errClosed: the page closed the handle.
var errClosed = errors.New("closed by the page")

// lostError: the connection ended the session, not the shell.
type lostError struct{ err error }

func (e *lostError) Error() string { return "the connection ended: " + e.err.Error() }

// exitReason is why a session ended, as endOf understands it.
func exitReason(err, ctxErr error) error {
	var (
		exit *ssh.ExitError
		miss *ssh.ExitMissingError
	)
	switch {
	case ctxErr != nil:
		return errClosed
	case err == nil:
		return &ssh.ExitError{} // status 0
	case errors.As(err, &exit), errors.As(err, &miss):
		return err
	}
	return &lostError{err}
}

// endOf is how the page is told an attempt or a session ended: a kind it
// acts on, a message for the user, and a detail.
//
//	unpinned    detail: the agent's fingerprint, for the user to compare
//	mismatch    detail: the fingerprint the agent presented
//	auth        detail: "password" when the agent takes passwords
//	passphrase  detail: "wrong" when the one given did not open the file
//	unreachable the server refused the WebSocket or could not be reached
//	exit        the shell ended; detail: its exit status
//	lost        the connection ended the session
//	closed      the page closed it
//	failed      anything else (a malformed pin, a key the browser
//	            would not use)
func endOf(err error) (kind, message, detail string) {
	var (
		hk   *HostKeyError
		ae   *AuthError
		pe   *PassphraseError
		de   *DialError
		lost *lostError
		exit *ssh.ExitError
		miss *ssh.ExitMissingError
	)
	switch {
	case errors.Is(err, errClosed):
		return "closed", "closed", ""
	case errors.As(err, &hk) && hk.Want == "":
		return "unpinned", hk.Error(), hk.Got
	case errors.As(err, &hk):
		return "mismatch", hk.Error(), hk.Got
	case errors.As(err, &ae):
		if ae.PasswordAllowed() {
			detail = "password"
		}
		return "auth", ae.Error(), detail
	case errors.As(err, &pe):
		if pe.Wrong {
			detail = "wrong"
		}
		return "passphrase", pe.Error(), detail
	case errors.As(err, &de):
		return "unreachable", de.Error(), ""
	case errors.As(err, &exit):
		st := fmt.Sprint(exit.ExitStatus())
		return "exit", "the shell ended with exit status " + st, st
	case errors.As(err, &miss):
		return "exit", "the shell ended without an exit status", ""
	case errors.As(err, &lost):
		return "lost", lost.Error(), ""
	}
	return "failed", err.Error(), ""
}
