// Package webterm is the SSH client of Converge's browser terminal. It
// runs in the browser, compiled to WebAssembly (cmd/webterm), and logs in
// to an agent over the page's WebSocket to /client/ID: it checks the
// agent's host key against the fingerprint the user pinned, logs in with
// the browser's key, a key file or a password, and runs one shell in a
// PTY. The relay in between sees only SSH ciphertext, exactly as with ssh
// and wsproxy; when the agent offers it the stream is resumable
// (internal/resume), so a dropped network or a restarted server is a
// pause.
//
// The files without build constraints hold the SSH logic and are tested
// natively against a real server and agent; the *_js.go files bridge it to
// the page: the browser's WebSocket, WebCrypto keys and xterm.js. It is
// not a terminal emulator (xterm.js is) and not a key store (the page
// keeps the browser's key in IndexedDB).
package webterm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Config of a terminal session. The zero value of each field selects its
// default, except Login.User, which is required.
type Config struct {
	// Pin is the agent's host key fingerprint the user expects,
	// "SHA256:…" (see ParsePin). Empty: Start learns the agent's key and
	// fails with a *HostKeyError that carries it, without logging in.
	Pin string
	// Login says how to log in.
	Login Login
	// Cols and Rows are the terminal's size. Default 80×24.
	Cols, Rows int
	// Term is the TERM of the shell. Default "xterm-256color".
	Term string
	// Command, when set, runs in the PTY instead of a login shell, such
	// as "attach 2" to join a shell the agent keeps. Default: a shell.
	Command string
	// Heartbeat is how often an SSH keepalive request checks the link,
	// since a browser cannot send WebSocket pings. Default 15s.
	Heartbeat time.Duration
	// HeartbeatTimeout is how long an answer may take before the link is
	// judged dead: a resumable stream then dials a new link, a plain one
	// ends. Default 10s.
	HeartbeatTimeout time.Duration
	// ResumeWindow is how long a resumable stream tries to get a new link
	// after a drop. Default 2 minutes.
	ResumeWindow time.Duration
	// HandshakeTimeout bounds the SSH handshake and login. Default 20s.
	HandshakeTimeout time.Duration
	// OnPause, when set, is called with true when the link drops and with
	// false when a new link carries the stream again.
	OnPause func(paused bool)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Login.User == "" {
		return errors.New("webterm: no SSH user name")
	}
	if c.Pin != "" {
		p, err := ParsePin(c.Pin)
		if err != nil {
			return err
		}
		c.Pin = p
	}
	if c.Cols <= 0 || c.Rows <= 0 {
		c.Cols, c.Rows = 80, 24
	}
	if c.Term == "" {
		c.Term = "xterm-256color"
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = 10 * time.Second
	}
	if c.ResumeWindow <= 0 {
		c.ResumeWindow = 2 * time.Minute
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 20 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Session is one shell on an agent. Read returns the terminal's output
// (io.EOF once the shell has ended and everything was read); Write sends
// keystrokes. Close ends it at any time.
type Session struct {
	cfg    Config
	st     *stream
	client *ssh.Client
	sess   *ssh.Session
	stdin  io.WriteCloser
	out    *io.PipeReader
	probe  chan time.Duration // heartbeat now, with this timeout
	ended  chan struct{}      // closed with err set when the shell ends
	err    error
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	sftpMu sync.Mutex
	sftp   *sftp.Client // opened by files on first use
}

// Start connects through dial, checks the host key, logs in, and starts
// a login shell in a PTY. ctx bounds only the start. Errors: *DialError
// (the server refused or is unreachable), *HostKeyError (no pin, or the
// wrong key), *AuthError (not let in).
func Start(ctx context.Context, dial Dialer, cfg Config) (*Session, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	st, err := openStream(ctx, dial, cfg.ResumeWindow, cfg.OnPause, cfg.Logger)
	if err != nil {
		return nil, err
	}
	client, err := handshake(ctx, st, cfg)
	if err != nil {
		st.abort()
		return nil, err
	}
	s := &Session{cfg: cfg, st: st, client: client, probe: make(chan time.Duration, 1), ended: make(chan struct{})}
	if err := s.startShell(); err != nil {
		client.Close()
		st.abort()
		return nil, err
	}
	hctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.heartbeat(hctx) }()
	go func() { defer s.wg.Done(); s.wait() }()
	return s, nil
}

// handshake runs SSH over st within the handshake timeout.
func handshake(ctx context.Context, st *stream, cfg Config) (*ssh.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, st.abort)
	defer stop()
	cc := &ssh.ClientConfig{
		// ChaCha20-Poly1305 first: WebAssembly has no AES instructions,
		// and Go's software AES-GCM seals 15 MB/s there against 63 MB/s
		// for ChaCha20-Poly1305 (measured under Node, 32 KiB packets).
		// The client's order decides.
		Config: ssh.Config{Ciphers: []string{
			ssh.CipherChaCha20Poly1305, ssh.CipherAES128GCM, ssh.CipherAES256GCM,
			ssh.CipherAES128CTR, ssh.CipherAES192CTR, ssh.CipherAES256CTR,
		}},
		// The agent's journal tells the browser terminal's logins from
		// other clients' by this (agent/sshd's webtermVersion).
		ClientVersion:   "SSH-2.0-Converge_webterm",
		User:            cfg.Login.User,
		AuthCallback:    cfg.Login.callback(),
		HostKeyCallback: checkHostKey(cfg.Pin),
	}
	c, chans, reqs, err := ssh.NewClientConn(st, "agent", cc)
	if err != nil {
		if ctx.Err() != nil && !errors.As(err, new(*HostKeyError)) && !errors.As(err, new(*AuthError)) {
			return nil, fmt.Errorf("the agent did not complete the SSH handshake within %v: %w", cfg.HandshakeTimeout, ctx.Err())
		}
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// startShell opens the session channel, the PTY and the shell.
func (s *Session) startShell() error {
	sess, err := s.client.NewSession()
	if err != nil {
		return fmt.Errorf("open a session: %w", err)
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty(s.cfg.Term, s.cfg.Rows, s.cfg.Cols, modes); err != nil {
		return fmt.Errorf("ask for a terminal: %w", err)
	}
	in, err := sess.StdinPipe()
	if err != nil {
		return fmt.Errorf("terminal input: %w", err)
	}
	pr, pw := io.Pipe() // io.Pipe serialises the two writers and brings backpressure
	sess.Stdout, sess.Stderr = pw, pw
	if s.cfg.Command != "" {
		err = sess.Start(s.cfg.Command)
	} else {
		err = sess.Shell()
	}
	if err != nil {
		return fmt.Errorf("start the shell: %w", err)
	}
	s.sess, s.stdin, s.out = sess, in, pr
	return nil
}

// wait waits for the shell to end, then lets Read see the end of output.
func (s *Session) wait() {
	err := s.sess.Wait()
	var exit *ssh.ExitError
	if err != nil && !errors.As(err, &exit) && s.st.rc != nil {
		if rerr := s.st.rc.Err(); rerr != nil {
			err = fmt.Errorf("%w (%v)", err, rerr)
		}
	}
	s.err = err
	close(s.ended)
	s.out.CloseWithError(io.EOF)
	s.client.Close()
}

// Read returns the terminal's output.
func (s *Session) Read(p []byte) (int, error) { return s.out.Read(p) }

// Write sends keystrokes (or pasted text) to the shell.
func (s *Session) Write(p []byte) (int, error) { return s.stdin.Write(p) }

// Resize tells the PTY the terminal's new size.
func (s *Session) Resize(cols, rows int) error { return s.sess.WindowChange(rows, cols) }

// Resumable reports whether the stream survives a lost link.
func (s *Session) Resumable() bool { return s.st.rc != nil }

// Check asks for a heartbeat now, judging the link dead when it goes
// unanswered for timeout: for when the browser says the network changed.
func (s *Session) Check(timeout time.Duration) {
	select {
	case s.probe <- timeout:
	default: // one is already due
	}
}

// Wait blocks until the shell ends and returns why: nil for exit status
// 0, an *ssh.ExitError for another status, or what ended the connection.
func (s *Session) Wait() error {
	<-s.ended
	return s.err
}

// Close ends the session at once and waits for its goroutines.
func (s *Session) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.sftpMu.Lock()
		if s.sftp != nil {
			s.sftp.Close()
		}
		s.sftpMu.Unlock()
		s.client.Close()
		s.st.abort()
		s.wg.Wait()
	})
	return nil
}

// heartbeat sends a keepalive request every Heartbeat (or when Check
// asks) and cuts the link when no answer comes within the timeout.
func (s *Session) heartbeat(ctx context.Context) {
	t := time.NewTicker(s.cfg.Heartbeat)
	defer t.Stop()
	for {
		timeout := s.cfg.HeartbeatTimeout
		select {
		case <-ctx.Done():
			return
		case <-s.ended:
			return
		case <-t.C:
		case timeout = <-s.probe:
		}
		cut := time.AfterFunc(timeout, func() {
			s.cfg.Logger.Info("heartbeat unanswered; cutting the link", "timeout", timeout)
			if s.st.rc != nil {
				s.st.links.cut()
			} else {
				s.st.abort()
			}
		})
		_, _, err := s.client.SendRequest("keepalive@openssh.com", true, nil)
		cut.Stop()
		if err != nil {
			return
		}
	}
}
