//go:build !js

package webterm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/test/faultproxy"
	"github.com/converge-ci/converge/internal/test/testlog"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server"
)

// rig is a real server and a real agent on loopback, with a fault proxy
// in front of the server for the terminal's links.
type rig struct {
	id    string
	proxy *faultproxy.Proxy
	agent *agent.Agent
	key   ssh.Signer // authorised on the agent
}

func newKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newRig(t *testing.T, mods ...func(*agent.Config)) *rig {
	t.Helper()
	log := testlog.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Listener: ln, SSHUser: "ciuser", Logger: log.With("side", "server")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	r := &rig{id: "webterm-" + strings.ToLower(t.Name()), key: newKey(t)}
	r.proxy, err = faultproxy.New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.proxy.Close() })

	out := &lockedBuffer{}
	cfg := agent.Config{
		Server: "ws://" + ln.Addr().String(), ID: r.id, Dir: t.TempDir(), Out: out, Shell: "/bin/sh",
		AuthorizedKeys: string(ssh.MarshalAuthorizedKey(r.key.PublicKey())),
		Logger:         log.With("side", "agent"),
	}
	for _, m := range mods {
		m(&cfg)
	}
	r.agent, err = agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	adone := make(chan error, 1)
	go func() { adone <- r.agent.Run(actx) }()
	t.Cleanup(func() { acancel(); <-adone })
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "registered") {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the agent to register")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// dialer reaches the agent through the proxy with coder/websocket, as the
// browser does with its own WebSocket.
func (r *rig) dialer(dials *int) Dialer {
	var mu sync.Mutex
	return func(ctx context.Context, protocols []string) (io.ReadWriteCloser, string, error) {
		mu.Lock()
		if dials != nil {
			*dials++
		}
		mu.Unlock()
		c, err := wsconn.Dial(ctx, "ws://"+r.proxy.Addr()+wire.ClientPath(r.id), wsconn.Options{Subprotocols: protocols})
		if err != nil {
			return nil, "", err
		}
		if c.Subprotocol() == resume.Protocol {
			return resume.WebSocket(c, time.Hour, time.Hour), c.Subprotocol(), nil
		}
		return websocket.NetConn(context.Background(), c, websocket.MessageBinary), c.Subprotocol(), nil
	}
}

func (r *rig) pin() string { return ssh.FingerprintSHA256(r.agent.HostKey()) }

func (r *rig) config(t *testing.T) Config {
	return Config{Pin: r.pin(), Login: Login{User: "ciuser", Signers: []ssh.Signer{r.key}}, Logger: testlog.New(t)}
}

func start(t *testing.T, dial Dialer, cfg Config) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Start(ctx, dial, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// screen collects a session's output.
type screen struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{}
	done chan struct{}
}

func watch(s *Session) *screen {
	sc := &screen{more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(sc.done)
		b := make([]byte, 4096)
		for {
			n, err := s.Read(b)
			sc.mu.Lock()
			sc.buf.Write(b[:n])
			sc.mu.Unlock()
			select {
			case sc.more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return sc
}

// waitFor waits until the output holds want.
func (sc *screen) waitFor(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		sc.mu.Lock()
		got := sc.buf.String()
		sc.mu.Unlock()
		if strings.Contains(got, want) {
			return
		}
		select {
		case <-sc.more:
		case <-timeout:
			t.Fatalf("terminal never showed %q; it shows:\n%s", want, got)
		}
	}
}

func typeIn(t *testing.T, s *Session, line string) {
	t.Helper()
	if _, err := s.Write([]byte(line + "\r")); err != nil {
		t.Fatalf("type %q: %v", line, err)
	}
}

// TestShell logs in with a key, runs commands in a PTY of the requested
// size, follows a resize, and reports the shell's exit status.
func TestShell(t *testing.T) {
	r := newRig(t)
	cfg := r.config(t)
	cfg.Cols, cfg.Rows = 91, 27
	s := start(t, r.dialer(nil), cfg)
	if !s.Resumable() {
		t.Error("the stream is not resumable; the agent offers it")
	}
	sc := watch(s)
	typeIn(t, s, `echo "$TERM"-$((40+2)) && stty size`)
	sc.waitFor(t, "xterm-256color-42")
	sc.waitFor(t, "27 91")
	if err := s.Resize(120, 33); err != nil {
		t.Fatal(err)
	}
	typeIn(t, s, "stty size")
	sc.waitFor(t, "33 120")
	typeIn(t, s, "exit 3")
	var exit *ssh.ExitError
	if err := s.Wait(); !errors.As(err, &exit) || exit.ExitStatus() != 3 {
		t.Errorf("Wait after exit 3: %v, want exit status 3", err)
	}
	<-sc.done
}

// TestHostKeyPinning: without a pin the agent's fingerprint comes back
// for the user to compare; with the wrong one Start refuses. Neither logs
// in.
func TestHostKeyPinning(t *testing.T) {
	r := newRig(t)
	other := ssh.FingerprintSHA256(newKey(t).PublicKey())
	for _, tc := range []struct{ name, pin, want string }{
		{"no pin", "", ""},
		{"wrong pin", other, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := r.config(t)
			cfg.Pin = tc.pin
			s, err := Start(context.Background(), r.dialer(nil), cfg)
			var hk *HostKeyError
			if !errors.As(err, &hk) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Start with pin %q: %v, want a *HostKeyError", tc.pin, err)
			}
			if hk.Got != r.pin() || hk.Want != tc.want {
				t.Errorf("HostKeyError{Want %q, Got %q}, want {%q, %q}", hk.Want, hk.Got, tc.want, r.pin())
			}
		})
	}
}

// TestAuthErrors: an unknown key is refused with what the agent allows;
// with a password allowed, the password gets in.
func TestAuthErrors(t *testing.T) {
	r := newRig(t, func(c *agent.Config) { c.Password = "s3cret" })
	cfg := r.config(t)
	cfg.Login.Signers = []ssh.Signer{newKey(t)}
	_, err := Start(context.Background(), r.dialer(nil), cfg)
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("Start with an unknown key: %v, want an *AuthError", err)
	}
	if !ae.PasswordAllowed() || ae.Keys != 1 || ae.TriedPassword {
		t.Errorf("AuthError %+v: want password allowed, 1 key tried, no password tried", *ae)
	}
	if !strings.Contains(ae.Error(), "password") {
		t.Errorf("AuthError says %q; it should mention the password", ae.Error())
	}
	cfg.Login.Password = "s3cret"
	s := start(t, r.dialer(nil), cfg)
	sc := watch(s)
	typeIn(t, s, "echo in-$((1+1))")
	sc.waitFor(t, "in-2")
}

// TestKeyFile: an encrypted key file asks for its passphrase, refuses a
// wrong one, and logs in with the right one.
func TestKeyFile(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte("open sesame"))
	if err != nil {
		t.Fatal(err)
	}
	file := pem.EncodeToMemory(block)
	var pe *PassphraseError
	if _, err := ParseKeyFile(file, ""); !errors.As(err, &pe) || pe.Wrong {
		t.Errorf("no passphrase: %v, want a PassphraseError asking for one", err)
	}
	if _, err := ParseKeyFile(file, "wrong"); !errors.As(err, &pe) || !pe.Wrong {
		t.Errorf("wrong passphrase: %v, want a PassphraseError saying so", err)
	}
	if _, err := ParseKeyFile([]byte("ssh-ed25519 AAAA not a private key"), ""); err == nil || !strings.Contains(err.Error(), ".pub") {
		t.Errorf("a public key: %v, want advice to pick the private key", err)
	}
	signer, err := ParseKeyFile(file, "open sesame")
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, func(c *agent.Config) { c.AuthorizedKeys = string(ssh.MarshalAuthorizedKey(signer.PublicKey())) })
	cfg := r.config(t)
	cfg.Login.Signers = []ssh.Signer{newKey(t), signer} // the browser key first, unknown here
	s := start(t, r.dialer(nil), cfg)
	sc := watch(s)
	typeIn(t, s, "echo file-$((2+2))")
	sc.waitFor(t, "file-4")
}

// pauses records OnPause calls.
type pauses struct {
	mu  sync.Mutex
	got []bool
}

func (p *pauses) record(v bool) { p.mu.Lock(); p.got = append(p.got, v); p.mu.Unlock() }
func (p *pauses) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, v := range p.got {
		if v {
			b.WriteString("pause ")
		} else {
			b.WriteString("resume ")
		}
	}
	return strings.TrimSpace(b.String())
}

// TestResumesAfterCut: a cut link (a network failure, a restarted
// server) is a pause; the command typed meanwhile runs.
func TestResumesAfterCut(t *testing.T) {
	r := newRig(t)
	var p pauses
	dials := 0
	cfg := r.config(t)
	cfg.OnPause = p.record
	s := start(t, r.dialer(&dials), cfg)
	sc := watch(s)
	typeIn(t, s, "echo before-$((3+3))")
	sc.waitFor(t, "before-6")
	if n := r.proxy.Cut(); n != 1 {
		t.Fatalf("cut %d connections, want 1", n)
	}
	typeIn(t, s, "echo after-$((3+4))")
	sc.waitFor(t, "after-7")
	if got := p.String(); got != "pause resume" {
		t.Errorf("OnPause calls: %q, want %q", got, "pause resume")
	}
	if dials != 2 {
		t.Errorf("%d dials, want 2", dials)
	}
}

// TestHeartbeatCutsSilentLink: a link that silently stops carrying bytes
// (the browser cannot ping) is cut when a heartbeat goes unanswered, and
// the stream resumes on a new one.
func TestHeartbeatCutsSilentLink(t *testing.T) {
	r := newRig(t)
	var p pauses
	cfg := r.config(t)
	cfg.OnPause = p.record
	s := start(t, r.dialer(nil), cfg)
	sc := watch(s)
	typeIn(t, s, "echo up-$((4+4))")
	sc.waitFor(t, "up-8")
	r.proxy.Pause()
	s.Check(100 * time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for p.String() != "pause" {
		if time.Now().After(deadline) {
			t.Fatalf("no pause after an unanswered heartbeat; OnPause calls: %q", p.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.proxy.Resume()
	typeIn(t, s, "echo back-$((4+5))")
	sc.waitFor(t, "back-9")
}

func TestParsePin(t *testing.T) {
	const fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
	for _, tc := range []struct{ in, want string }{
		{fp, fp},
		{" " + fp + "= ", fp},
		{strings.ReplaceAll(fp, "+", " "), fp},
		{"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", ""},
		{"SHA256:short", ""},
		{"MD5:aa:bb", ""},
	} {
		got, err := ParsePin(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("ParsePin(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
