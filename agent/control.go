package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// reclaimWindow is how long an agent whose link dropped keeps trying to
// take its ID back while the server answers 409: another agent holds the
// ID, which a server that cannot check this agent's secret (restarted
// with another key, say) may have let in, and which then loses the ID
// once the other goes. It is the server's default --grace: after it the
// ID is no longer this agent's anyway.
const reclaimWindow = 5 * time.Minute

// connectLoop keeps a control connection up until ctx ends, for as long as
// the agent lives. A refusal by the server (HTTP 4xx: bad ID, ID in use) is
// final, except 429 (a limit that may clear) and, for reclaimWindow after
// a registered link dropped, 409; so is a welcome the agent cannot accept
// (errBadWelcome); anything else is retried with backoff.
//
// Until the first registration succeeds, failures are reported as "could
// not reach the server" with their cause, and those that retrying will
// not fix end the agent with an *UnreachableError (see firstFailure); so
// does ctx ending before the agent ever registered.
func (a *Agent) connectLoop(ctx context.Context) error {
	backoff := wire.ReconnectMin
	announced := false
	var lost time.Time // when the last registered link ended; zero before the first
	var firstErr error // the last failure before the first registration
	tries := 0         // failed attempts at the first registration
	for {
		connected, err := a.control(ctx, !announced)
		if ctx.Err() != nil {
			if !announced && firstErr != nil {
				return &UnreachableError{Server: a.cfg.Server, Err: firstErr}
			}
			return nil
		}
		if connected {
			announced = true
			backoff = wire.ReconnectMin
			lost = time.Now()
		}
		if errors.Is(err, errBadWelcome) {
			return err
		}
		if !announced {
			tries++
			firstErr = err
			if firstFailure(err, tries) {
				return &UnreachableError{Server: a.cfg.Server, Err: err}
			}
		}
		d := wire.Jitter(backoff)
		if connected {
			d = wire.Spread(wire.ReconnectSpread)
		}
		if re := finalRefusal(err); re != nil {
			if !reclaiming(re, lost, time.Now()) {
				return refused(re, lost)
			}
			a.log.Warn("server says another agent holds this ID; retrying to take it back", "refusal", re.Message,
				"in", d.Round(time.Millisecond), "giving_up_in", time.Until(lost.Add(reclaimWindow)).Round(time.Second))
		} else if errors.Is(err, errIDTokenRequest) {
			a.log.Warn("no identity token from GitHub Actions; retrying", "error", err, "in", d.Round(time.Millisecond))
		} else if !announced {
			a.log.Warn("could not reach the server; retrying", "error", err, "in", d.Round(time.Millisecond))
		} else {
			a.log.Warn("connection to server lost; reconnecting", "error", err, "in", d.Round(time.Millisecond))
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, wire.ReconnectMax)
	}
}

// errBadWelcome: the server answered the hello with a welcome that
// decodes to no valid message, such as one whose ssh_user is not a user
// name by wire.ValidUser (the agent prints it in the job log). The server
// is not a Converge server of a version this agent speaks, or it
// misbehaves; asking again would get the same answer, so the agent stops.
var errBadWelcome = errors.New("the server's welcome is invalid (is the URL that of a Converge server, of a version this agent speaks?)")

// finalRefusal returns err's refusal if retrying cannot help: the server
// answered 4xx (bad ID, ID in use or reserved), except 429 (a limit that
// may clear). Network errors, 5xx and drops are never final.
func finalRefusal(err error) *wsconn.RefusedError {
	var re *wsconn.RefusedError
	if errors.As(err, &re) && re.Status >= 400 && re.Status < 500 && re.Status != http.StatusTooManyRequests {
		return re
	}
	return nil
}

// reclaiming reports whether refusal re is still worth retrying at now:
// a 409 to an agent that was registered until lost (zero: never), within
// reclaimWindow of it. A first registration's 409 is final: the ID is
// someone else's.
func reclaiming(re *wsconn.RefusedError, lost, now time.Time) bool {
	return re.Status == http.StatusConflict && !lost.IsZero() && now.Sub(lost) < reclaimWindow
}

// refused is the error that ends the agent on refusal re; lost as for
// reclaiming. A 401 is the registration policy's: lifetime.ErrNotAdmitted
// with the server's reason.
func refused(re *wsconn.RefusedError, lost time.Time) error {
	if re.Status == http.StatusUnauthorized {
		return fmt.Errorf("%w: %s", lifetime.ErrNotAdmitted, re.Message)
	}
	if re.Status == http.StatusConflict && !lost.IsZero() {
		return fmt.Errorf("server refused agent: %s (tried for %v to take the ID back after the link dropped)", re.Message, reclaimWindow)
	}
	return fmt.Errorf("server refused agent: %s", re.Message)
}

// register opens the control connection: with the agent's secret, if
// it has one, and its host key, proving it holds the key when the server
// asks (a 401 with a challenge; a server that binds no keys never asks).
func (a *Agent) register(ctx context.Context) (*websocket.Conn, error) {
	hdr := http.Header{}
	if a.secret != "" {
		hdr.Set(wire.SecretHeader, a.secret)
	}
	if err := a.credentials(ctx, hdr); err != nil {
		return nil, err
	}
	if k := a.proofKey(); k != nil {
		hdr.Set(wire.AgentKeyHeader, base64.StdEncoding.EncodeToString(k))
	}
	protocols := []string{wire.ControlProtocolV2, wire.ControlProtocol} // v2: stream pools
	if a.cfg.NoStreamPool {
		protocols = []string{wire.ControlProtocol}
	}
	dial := func() (*websocket.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return wsconn.Dial(dctx, a.cfg.Server+wire.AgentPath(a.cfg.ID), wsconn.Options{Subprotocols: protocols, Header: hdr})
	}
	c, err := dial()
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusUnauthorized || re.Header.Get(wire.ChallengeHeader) == "" || hdr.Get(wire.AgentKeyHeader) == "" {
		return c, err
	}
	if err := a.prove(hdr, re.Header.Get(wire.ChallengeHeader)); err != nil {
		return nil, err
	}
	return dial()
}

// control runs one control connection: register, then serve dial requests
// until the connection ends. connected reports whether registration
// succeeded.
func (a *Agent) control(ctx context.Context, announce bool) (connected bool, err error) {
	c, err := a.register(ctx)
	if err != nil {
		return false, err
	}
	defer c.CloseNow()
	c.SetReadLimit(wire.MaxMessageSize)

	if err := wire.Send(ctx, c, wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: a.cfg.Version, Protocols: []string{resume.Protocol}, Info: a.info()}}); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	m, err := wire.Receive(rctx, c)
	cancel()
	if errors.Is(err, wire.ErrInvalid) {
		return false, fmt.Errorf("%w: %s", errBadWelcome, wsconn.Sanitize(err.Error()))
	}
	if err != nil {
		return false, fmt.Errorf("read welcome: %w", err)
	}
	if m.Type != wire.TypeWelcome {
		return false, fmt.Errorf("server sent %q instead of welcome", m.Type)
	}
	a.secret = m.Welcome.Secret
	a.user.Store(&m.Welcome.SSHUser)
	if announce {
		a.announce()
	} else {
		a.log.Info("reconnected to server")
	}
	// The link's own context: reads, writes and pings on c use lctx, which
	// ends only with this link, so that the agent ending (ctx) says
	// goodbye on it (see serveControl) rather than cutting it, which
	// coder/websocket does to a connection whose context ends mid-read.
	lctx, endLink := context.WithCancel(context.WithoutCancel(ctx))
	defer endLink()
	defer a.life.Report(ctx, func(_ context.Context, st wire.Status) error {
		return wire.Send(lctx, c, wire.Message{Type: wire.TypeStatus, Status: &st})
	})()
	if a.cfg.OnRegistered != nil {
		a.cfg.OnRegistered()
	}

	// Keepalive: a missing pong means the link is dead, whatever TCP says.
	kctx, stopKeepalive := context.WithCancel(lctx)
	kdone := make(chan struct{})
	go func() {
		defer close(kdone)
		wsconn.Keepalive(kctx, c, wsconn.PingInterval, wsconn.PingTimeout, func(err error) {
			a.log.Warn("server link dead", "error", err)
			c.CloseNow()
		})
	}()
	defer func() { stopKeepalive(); <-kdone }()

	return true, a.serveControl(ctx, lctx, c, c.Subprotocol() == wire.ControlProtocolV2)
}

// serveControl reads the server's messages on control connection c, with
// lctx (the link's context), until it ends. When ctx ends first, the agent
// ends on purpose: it says goodbye (wire.Bye), and the server frees its
// ID at once and closes c. pooling: the server speaks control v2, so it may ask
// for idle streams (wire.Pool); they end with c, unless a client was
// assigned to them by then.
func (a *Agent) serveControl(ctx, lctx context.Context, c *websocket.Conn, pooling bool) error {
	idle, endIdle := context.WithCancel(ctx)
	defer endIdle()
	var idleStreams atomic.Int64 // pool streams opening or waiting for a client
	done, said := make(chan struct{}), make(chan struct{})
	stopBye := context.AfterFunc(ctx, func() {
		defer close(said)
		a.goodbye(lctx, c, done)
	})
	defer func() {
		close(done)
		if !stopBye() {
			<-said
		}
	}()
	for {
		m, err := wire.Receive(lctx, c)
		if err != nil {
			return err
		}
		switch {
		case m.Type == wire.TypeWelcome: // a fresh secret: the server re-signs it every so often
			a.secret = m.Welcome.Secret
		case m.Type == wire.TypeDial:
			a.streams.Add(1)
			go func() {
				defer a.streams.Done()
				a.dialStream(ctx, *m.Dial)
			}()
		case m.Type == wire.TypePool && pooling:
			if idleStreams.Load() >= wire.MaxIdleStreams {
				a.log.Debug("not opening another idle stream: the server asks for more than an agent keeps", "max", wire.MaxIdleStreams)
				continue
			}
			idleStreams.Add(1)
			a.streams.Add(1)
			go func() {
				defer a.streams.Done()
				a.poolStream(idle, ctx, m.Pool.Token, func() { idleStreams.Add(-1) })
			}()
		default:
			a.log.Warn("ignoring unexpected control message", "type", m.Type)
		}
	}
}

// goodbye tells the server on control connection c that the agent ends on
// purpose (wire.Bye), so that it frees the ID at once, and gives it 5 s
// to close c (done is closed when c has ended); then cuts c.
func (a *Agent) goodbye(lctx context.Context, c *websocket.Conn, done <-chan struct{}) {
	if err := wire.Send(lctx, c, wire.Message{Type: wire.TypeBye, Bye: &wire.Bye{Reason: "the agent ended"}}); err != nil {
		a.log.Debug("cannot say goodbye to the server; it keeps the ID for a while", "error", err)
		c.CloseNow()
		return
	}
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		c.CloseNow()
	}
}

// info describes this agent to the server.
func (a *Agent) info() wire.Info {
	host, _ := os.Hostname()
	var name string
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return wire.Info{
		Hostname:    host,
		OS:          runtime.GOOS,
		Arch:        runtime.GOARCH,
		User:        name,
		Dir:         a.cfg.Dir,
		CI:          ciHints(),
		Fingerprint: gossh.FingerprintSHA256(a.signer.PublicKey()),
		Status:      a.life.Status(),
	}
}

// ciHints picks well-known CI variables that tell which job this is.
func ciHints() map[string]string {
	keys := []string{
		"GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_JOB", "GITHUB_WORKFLOW",
		"CI_PROJECT_PATH", "CI_JOB_ID", "CI_JOB_NAME", "CI_PIPELINE_ID",
		"BUILD_URL", "JOB_NAME", "BUILD_NUMBER",
		"BUILDKITE_PIPELINE_SLUG", "BUILDKITE_BUILD_NUMBER",
		"CIRCLE_PROJECT_REPONAME", "CIRCLE_BUILD_NUM",
	}
	var m map[string]string
	for _, k := range keys {
		if v := os.Getenv(k); v != "" {
			if m == nil {
				m = make(map[string]string)
			}
			if len(v) > 200 {
				v = v[:200]
			}
			m[k] = v
		}
	}
	return m
}

// announce prints what a user needs to connect.
func (a *Agent) announce() {
	id, user := a.cfg.ID, a.sshUser()
	client := a.cfg.Server + wire.ClientPath(id)
	key := a.signer.PublicKey()
	// `wsproxy config-ssh` makes ssh name the job ID.HOST, and check its
	// key under that name (a wildcard block can have no HostKeyAlias).
	byName := id
	if u, err := url.Parse(a.cfg.Server); err == nil && u.Hostname() != "" {
		byName = id + "." + u.Hostname()
	}
	fmt.Fprintf(a.cfg.Out, `Converge agent registered as %q at %s
Host key:  %s
Verify it: add this line to ~/.ssh/known_hosts
  %s
Connect:
  ssh  -oProxyCommand="wsproxy %s" -oHostKeyAlias=%s %s@localhost
  sftp -oProxyCommand="wsproxy %s" -oHostKeyAlias=%s %s@localhost
  or:  tcptows 10000 %s
       ssh -p 10000 -oHostKeyAlias=%s %s@localhost
  or by name, for IDEs too: once  wsproxy config-ssh --server %s --user %s
       add to ~/.ssh/known_hosts  %s
       ssh %s
  or in a browser: %s
`, id, a.cfg.Server, gossh.FingerprintSHA256(key), knownHostsLine(id, key),
		client, id, user, client, id, user, client, id, user,
		a.cfg.Server, user, knownHostsLine(byName, key), byName,
		terminalURL(a.cfg.Server, id)+"#fp="+gossh.FingerprintSHA256(key))
}

// terminalURL is the browser terminal's page for id on server (ws:// or
// wss://, as the agent was given it).
func terminalURL(server, id string) string {
	u, err := url.Parse(server)
	if err != nil {
		return server + wire.TerminalPath(id)
	}
	u.Scheme = wire.HTTPScheme(u.Scheme)
	return strings.TrimSuffix(u.String(), "/") + wire.TerminalPath(id)
}
