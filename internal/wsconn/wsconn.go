// Package wsconn holds Converge's WebSocket conventions on top of
// github.com/coder/websocket: how we dial and accept (explicit subprotocols,
// compression off, read limits left to what each connection carries), how
// refusals before the upgrade become readable errors (with the server's
// text made safe to print, see Sanitize), close codes, and keepalive pings.
//
// It is not a protocol of its own: the bytes carried are the caller's.
package wsconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/coder/websocket"
)

// Close codes of our own (RFC 6455 leaves 4000-4999 to applications).
const (
	// CodeReplaced: another connection took this one's place (a re-registering agent).
	CodeReplaced websocket.StatusCode = 4001
	// CodeRefused: the peer broke the protocol or a limit; the reason says which.
	CodeRefused websocket.StatusCode = 4002
)

// Keepalive timing. Load balancers cut idle connections after about 60 s
// whatever TCP does, so every WebSocket of ours sends a ping well within that.
const (
	PingInterval = 20 * time.Second
	PingTimeout  = 15 * time.Second
)

// RefusedError is a handshake the server answered with an HTTP status
// instead of an upgrade. Message is the server's explanation, passed
// through Sanitize: one line, safe to print.
type RefusedError struct {
	URL     string
	Status  int
	Message string
	Header  http.Header // the refusal's headers
}

func (e *RefusedError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%s refused the connection: %d %s", e.URL, e.Status, msg)
}

// Options for Dial.
type Options struct {
	Subprotocols []string
	Header       http.Header
	// HTTPClient defaults to one that honours HTTPS_PROXY, HTTP_PROXY and NO_PROXY.
	HTTPClient *http.Client
	// Response, when set, is called with the headers of the server's
	// switch (101) before Dial returns.
	Response func(http.Header)
}

// Dial opens a WebSocket to rawURL (ws:// or wss://). When the server
// refuses the upgrade, the error is a *RefusedError carrying its message.
// The returned connection has compression off; its read limit is the
// caller's to choose (see Accept).
func Dial(ctx context.Context, rawURL string, opts Options) (*websocket.Conn, error) {
	if err := CheckURL(rawURL); err != nil {
		return nil, err
	}
	client := opts.HTTPClient
	if client == nil {
		client = defaultClient
	}
	c, resp, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{
		HTTPClient:      client,
		HTTPHeader:      opts.Header,
		Subprotocols:    opts.Subprotocols,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, Refusal(rawURL, resp)
		}
		return nil, fmt.Errorf("connect to %s: %w", rawURL, err)
	}
	if opts.Response != nil {
		opts.Response(resp.Header)
	}
	return c, nil
}

var defaultClient = &http.Client{
	Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialBatched,
		TLSHandshakeTimeout: 15 * time.Second,
		ForceAttemptHTTP2:   false,
	},
}

// Refusal makes the error for a handshake to rawURL that resp refused:
// its status and the first line of its body, made safe to print. It
// reads and closes the body.
func Refusal(rawURL string, resp *http.Response) *RefusedError {
	var msg string
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		msg = Sanitize(string(b))
	}
	return &RefusedError{URL: rawURL, Status: resp.StatusCode, Message: msg, Header: resp.Header}
}

// CheckURL reports, in words a user can act on, what is wrong with a
// WebSocket URL given on a command line.
func CheckURL(rawURL string) error {
	_, err := ParseURL(rawURL)
	return err
}

// ParseURL parses a WebSocket URL given on a command line: ws:// or wss://
// with a host. Its errors are CheckURL's.
func ParseURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("bad URL %q: %v", rawURL, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http", "https":
		return nil, fmt.Errorf("bad URL %q: use ws:// or wss:// instead of %s://", rawURL, u.Scheme)
	default:
		return nil, fmt.Errorf("bad URL %q: it must start with ws:// or wss://", rawURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("bad URL %q: no host", rawURL)
	}
	return u, nil
}

// PlainTextRemote reports whether rawURL is a plain ws:// (or http://)
// URL to a host other than this machine (localhost, 127.0.0.0/8, ::1):
// anyone on the path between can then read and change what flows outside
// SSH's encryption (the registration, the stream's framing), so callers
// warn. A URL that does not parse is not plain text here: ParseURL
// refuses it.
func PlainTextRemote(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "http") {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return false
	}
	ip := net.ParseIP(h)
	return ip == nil || !ip.IsLoopback()
}

// Accept upgrades an HTTP request to a WebSocket with our conventions:
// compression off and the given subprotocols. It does not check the
// Origin header (coder/websocket's check knows nothing of reverse
// proxies): the caller must, before accepting, as the server does for its
// endpoints.
//
// The read limit is the caller's to choose, for what the connection
// carries: control connections set wire.MaxMessageSize; streams are read
// through NetConn (ours or coder/websocket's), which removes the limit,
// and rightly so: it reads a message piece by piece into the caller's
// buffer, so a message's size costs no memory, and a limit would only
// break a client tool that writes large messages. Until the caller
// chooses, coder/websocket's default of 32 KiB applies to Read and Reader.
func Accept(w http.ResponseWriter, r *http.Request, subprotocols ...string) (*websocket.Conn, error) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       subprotocols,
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Keepalive pings c every interval (jittered by up to a tenth) until ctx
// ends. With dead set, a ping not answered within timeout calls dead once
// and stops; without it, pings only keep middleboxes from cutting an idle
// connection, and an unanswered ping is not an error (a peer busy applying
// backpressure may be slow to read a pong, and full is not dead).
// Pings need a concurrent reader on c.
func Keepalive(ctx context.Context, c *websocket.Conn, interval, timeout time.Duration, dead func(error)) {
	for {
		d := interval - time.Duration(rand.Int64N(int64(interval/10)+1))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil && dead != nil {
			dead(fmt.Errorf("keepalive: no pong within %v: %w", timeout, err))
			return
		}
	}
}

// IsClosed reports whether err means the connection ended in an orderly or
// expected way (closed by either side, or by our own context).
func IsClosed(err error) bool {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) {
		return true
	}
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure, websocket.StatusGoingAway:
		return true
	}
	return false
}

var dialer = &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}

// dialBatched dials TCP and batches the connection's writes (see batchConn).
func dialBatched(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return newBatchConn(c), nil
}
