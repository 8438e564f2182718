//go:build js && wasm

package webterm

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall/js"
	"time"
)

// maxBuffered bounds what a link lets the browser queue for sending
// before Write waits: the browser's send never blocks, so this is the
// only backpressure on the way out.
const maxBuffered = 1 << 20

// CloseError is how the server or the network closed a browser
// WebSocket. Code 1006 means the connection dropped without a close
// message.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("connection closed (code %d)", e.Code)
	}
	return fmt.Sprintf("connection closed (code %d): %s", e.Code, e.Reason)
}

// wsLink is a browser WebSocket as a byte stream. Messages arrive in a
// JavaScript callback, which must not block, so they queue here; what
// bounds the queue is the stream inside (the resume window, or SSH's
// channel window), never a drop.
type wsLink struct {
	ws     js.Value
	funcs  []js.Func
	opened chan struct{} // closed when open
	notify chan struct{} // a message or the close arrived

	mu     sync.Mutex
	queue  [][]byte
	closed error // set once closed: why
	once   sync.Once
}

// DialWebSocket returns a Dialer that opens browser WebSockets to url.
func DialWebSocket(url string) Dialer {
	return func(ctx context.Context, protocols []string) (io.ReadWriteCloser, string, error) {
		l, err := openWebSocket(ctx, url, protocols)
		if err != nil {
			return nil, "", err
		}
		return l, l.ws.Get("protocol").String(), nil
	}
}

func openWebSocket(ctx context.Context, url string, protocols []string) (*wsLink, error) {
	ps := make([]any, len(protocols))
	for i, p := range protocols {
		ps[i] = p
	}
	l := &wsLink{opened: make(chan struct{}), notify: make(chan struct{}, 1)}
	l.ws = js.Global().Get("WebSocket").New(url, js.ValueOf(ps))
	l.ws.Set("binaryType", "arraybuffer")
	l.on("open", func(js.Value) { close(l.opened) })
	l.on("message", func(ev js.Value) {
		b := bytesFromJS(ev.Get("data"))
		l.mu.Lock()
		l.queue = append(l.queue, b)
		l.mu.Unlock()
		l.wake()
	})
	l.on("close", func(ev js.Value) {
		l.fail(&CloseError{Code: ev.Get("code").Int(), Reason: ev.Get("reason").String()})
	})
	select {
	case <-l.opened:
		return l, nil
	case <-l.notify: // closed before it opened
		l.Close()
		return nil, l.err()
	case <-ctx.Done():
		l.Close()
		return nil, ctx.Err()
	}
}

// on sets the handler of one WebSocket event.
func (l *wsLink) on(event string, fn func(js.Value)) {
	f := js.FuncOf(func(_ js.Value, args []js.Value) any {
		fn(arg(args, 0))
		return nil
	})
	l.funcs = append(l.funcs, f)
	l.ws.Set("on"+event, f)
}

func (l *wsLink) wake() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

func (l *wsLink) fail(err error) {
	l.mu.Lock()
	if l.closed == nil {
		l.closed = err
	}
	l.mu.Unlock()
	l.wake()
}

func (l *wsLink) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Read returns received bytes; after the close, the close's reason (a
// *CloseError, or net.ErrClosed after Close).
func (l *wsLink) Read(p []byte) (int, error) {
	for {
		l.mu.Lock()
		if len(l.queue) > 0 {
			n := copy(p, l.queue[0])
			if n == len(l.queue[0]) {
				l.queue = l.queue[1:]
			} else {
				l.queue[0] = l.queue[0][n:]
			}
			l.mu.Unlock()
			return n, nil
		}
		err := l.closed
		l.mu.Unlock()
		if err != nil {
			return 0, err
		}
		<-l.notify
	}
}

// Write sends p as one binary message. It waits while the browser holds
// more than maxBuffered unsent bytes.
func (l *wsLink) Write(p []byte) (int, error) {
	for {
		if err := l.err(); err != nil {
			return 0, err
		}
		if l.ws.Get("bufferedAmount").Int() <= maxBuffered {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.ws.Call("send", bytesToJS(p))
	return len(p), nil
}

// Close closes the WebSocket with a normal closure (the browser sends what
// it has queued first) and ends pending reads with net.ErrClosed.
func (l *wsLink) Close() error {
	l.once.Do(func() {
		l.fail(net.ErrClosed)
		for _, ev := range []string{"onopen", "onmessage", "onclose"} {
			l.ws.Set(ev, js.Null())
		}
		for _, f := range l.funcs {
			f.Release()
		}
		if rs := l.ws.Get("readyState").Int(); rs == 0 || rs == 1 { // CONNECTING, OPEN
			l.ws.Call("close", 1000)
		}
	})
	return nil
}
