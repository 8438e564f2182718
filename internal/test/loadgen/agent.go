package loadgen

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// agent is one synthetic agent. Only its run goroutine touches its fields.
type agent struct {
	f      *Fleet
	id     string
	n      int
	client *http.Client
	secret string // from the last welcome; presented when reconnecting
	epoch  int    // the Mark it was last counted back in
}

// run keeps the control connection up until ctx ends, as the agent's
// connectLoop does: a final refusal stops it, anything else is retried
// after a jittered, doubling backoff that a welcome resets.
func (a *agent) run(ctx context.Context) {
	backoff := a.f.cfg.BackoffMin
	for {
		connected, err := a.control(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := wire.Jitter(backoff)
		if connected {
			backoff = a.f.cfg.BackoffMin
			wait = wire.Spread(a.f.cfg.ReconnectSpread) // as the agent spreads its first attempt after a drop
		} else {
			final := finalRefusal(err)
			a.f.failed(a.id, err, final)
			if final {
				return
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, a.f.cfg.BackoffMax)
	}
}

// control runs one control connection: register, then answer dial
// requests until it ends. connected reports whether it was welcomed.
func (a *agent) control(ctx context.Context) (connected bool, err error) {
	a.f.update(func(s *Stats) { s.Attempts++ })
	dialled := time.Now()
	hdr := http.Header{}
	if a.secret != "" {
		hdr.Set(wire.SecretHeader, a.secret)
	}
	if ts := a.f.cfg.IDTokens; len(ts) > 0 {
		hdr.Set(wire.IDTokenHeader, ts[a.n%len(ts)])
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	c, err := wsconn.Dial(dctx, a.f.cfg.Server+wire.AgentPath(a.id), wsconn.Options{
		Subprotocols: []string{wire.ControlProtocol}, Header: hdr, HTTPClient: a.client,
	})
	cancel()
	if err != nil {
		return false, err
	}
	defer c.CloseNow()
	c.SetReadLimit(wire.MaxMessageSize)

	info := a.info()
	if err := wire.Send(ctx, c, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "loadgen", Info: info}}); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	m, err := wire.Receive(rctx, c)
	cancel()
	if err != nil {
		return false, fmt.Errorf("read welcome: %w", err)
	}
	if m.Type != wire.TypeWelcome {
		return false, fmt.Errorf("server sent %q instead of welcome", m.Type)
	}
	a.secret = m.Welcome.Secret
	a.epoch = a.f.welcomed(a.epoch, dialled)
	defer a.f.update(func(s *Stats) { s.Connected-- })
	if err := wire.Send(ctx, c, wire.Message{Type: wire.TypeStatus, Status: &info.Status}); err != nil {
		return true, fmt.Errorf("send status: %w", err)
	}

	kctx, stopKeepalive := context.WithCancel(ctx)
	kdone := make(chan struct{})
	go func() {
		defer close(kdone)
		wsconn.Keepalive(kctx, c, wsconn.PingInterval, wsconn.PingTimeout, func(error) { c.CloseNow() })
	}()
	defer func() { stopKeepalive(); <-kdone }()

	for {
		m, err := wire.Receive(ctx, c)
		if err != nil {
			if ctx.Err() != nil {
				c.Close(websocket.StatusNormalClosure, "agent stopping")
			}
			return true, err
		}
		if m.Type == wire.TypeDial {
			a.f.wg.Add(1)
			go func() {
				defer a.f.wg.Done()
				a.echo(ctx, *m.Dial)
			}()
		}
	}
}

// echo dials back the stream a client waits for and sends its bytes back
// until either side closes it or ctx ends.
func (a *agent) echo(ctx context.Context, d wire.Dial) {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := wsconn.Dial(dctx, a.f.cfg.Server+wire.StreamPath(a.id, d.Token), wsconn.Options{
		Subprotocols: []string{wire.StreamProtocol}, HTTPClient: a.client,
	})
	cancel()
	if err != nil {
		a.f.log.Debug("cannot open stream for a client", "id", a.id, "error", err)
		return
	}
	a.f.update(func(s *Stats) { s.Streams++ })
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	defer nc.Close()
	io.Copy(nc, nc)
}

// info is what a CI job's agent says about itself, of about the same
// size, different for every agent.
func (a *agent) info() wire.Info {
	sum := sha256.Sum256([]byte(a.id))
	return wire.Info{
		Hostname: fmt.Sprintf("runner-%05d", a.n),
		OS:       "linux",
		Arch:     "amd64",
		User:     "runner",
		Dir:      fmt.Sprintf("/home/runner/work/project-%05d/project-%05d", a.n, a.n),
		CI: map[string]string{
			"GITHUB_REPOSITORY": fmt.Sprintf("example/project-%05d", a.n),
			"GITHUB_RUN_ID":     strconv.Itoa(9_000_000_000 + a.n),
			"GITHUB_JOB":        "build",
			"GITHUB_WORKFLOW":   "CI",
		},
		Fingerprint: "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:]),
		Status:      wire.Status{Expiry: time.Now().Add(time.Hour).Truncate(time.Second)},
	}
}
