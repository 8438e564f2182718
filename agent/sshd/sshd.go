// Package sshd is the agent's embedded SSH server: who may log in (the
// server's SSH user name with an authorized key, or a password), the host
// key, sessions and the processes they run (a PTY or pipes, agent
// forwarding, the end of what a session leaves behind), SFTP, port
// forwarding (ssh -L, -R), and reaping orphans when the agent is PID 1.
//
// It is not the link to the rendezvous server: it never dials, never
// listens for its own traffic, and knows nothing of control messages,
// streams or resumption. Its caller hands it connections as a
// net.Listener (package agent's streams) and decides how long it runs
// (package agent/lifetime, through Config.Watcher). It never imports
// package agent.
package sshd

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// handshakeTimeout bounds an SSH handshake: neither x/crypto/ssh nor
// gliderlabs/ssh bounds it, and a stream that never completes one must not
// hold resources.
const handshakeTimeout = 30 * time.Second

// Config of a Server.
type Config struct {
	// Dir is the working directory of sessions and of SFTP's relative
	// paths, and where .authorized_keys is read from when no other key
	// source is given. Default: the current directory.
	Dir string
	// AuthorizedKeysFiles are read at each login. When any of
	// AuthorizedKeysFiles, AuthorizedKeys and AuthorizedKeysURLs is set,
	// Dir/.authorized_keys is read only if listed here: Dir is usually a
	// checkout, which a pull request can change. Nil: see Dir.
	AuthorizedKeysFiles []string
	// AuthorizedKeys holds authorized_keys lines given directly (for CI
	// secrets in an environment variable). Empty: none.
	AuthorizedKeys string
	// AuthorizedKeysURLs are fetched once by New, such as a forge's
	// https://github.com/USER.keys; a failed fetch fails New. Nil: none.
	AuthorizedKeysURLs []string
	// TrustedUserCAKeys is a file of certificate authorities' public keys
	// (OpenSSH's TrustedUserCAKeys), re-read at each login: a user
	// certificate one of them signed logs in when it names the SSH user
	// name as a principal. Empty: none (cert-authority lines in the key
	// sources still work).
	TrustedUserCAKeys string
	// HTTPClient fetches AuthorizedKeysURLs. Nil: http.DefaultClient.
	HTTPClient *http.Client
	// Password, when set, also allows password logins. Empty: keys only.
	Password string
	// Shell runs sessions and commands: a path or a name looked up in PATH.
	// Empty: $SHELL, else bash, else sh; on Windows PowerShell, else
	// cmd.exe ("cmd" chooses cmd.exe).
	Shell string
	// Env is added (KEY=value) to every session's environment, after the
	// agent's own (less its secrets) and before what the client sends,
	// such as `agent run`'s HISTFILE. Nil: nothing is added.
	Env []string
	// HostKey is the server's host key. Nil: a fresh ed25519 key (see
	// LoadHostKey for one from a file or PEM).
	HostKey gossh.Signer
	// User returns the one user name that may log in, asked at each
	// login (the agent learns it from the rendezvous server). Nil, or an
	// empty name: nobody logs in.
	User func() string
	// Version goes into the SSH banner as Converge_Version. Empty: "dev".
	Version string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Watcher is told of logins, user input and sessions (the agent's
	// lifetime). Nil: nobody is.
	Watcher Watcher
	// OnLogin, if set, is called once per connection when its user has
	// logged in (a verified signature or password; never for a key merely
	// offered), with the connection as the listener delivered it. It runs
	// on the connection's handshake and must not block. Nil: nothing is
	// called.
	OnLogin func(net.Conn)
	// ObserverKeysFiles, ObserverKeys and ObserverKeysURLs are the key
	// sources of observers, read as their AuthorizedKeys twins: a key
	// found there logs in (as the same user) only to watch kept shells,
	// read-only. Nil, empty: no observers.
	ObserverKeysFiles []string
	ObserverKeys      string
	ObserverKeysURLs  []string
	// ID is the agent's ID, shown in the hints of kept shells (ssh -t ID
	// attach). Empty: the word ID.
	ID string
	// Journal records logins, refusals and sessions, and writes their
	// lines in the log. Nil: a journal in memory, logging to Logger.
	Journal *journal.Journal
	// SessionEnv, if set, is called as each shell or command session
	// starts, with the session's environment; it returns the environment
	// to use (the converge command's) and a release called when the
	// session ends. Nil: the environment as it is.
	SessionEnv func(conn, session string, env []string) ([]string, func())
	// RecordShell, if set, is called as each interactive shell starts (a
	// PTY, no command) and returns its recording, or nil not to record
	// it (see ShellRecording). An error refuses the shell: a team that
	// records shells must not get one unrecorded. Nil: no shell is
	// recorded.
	RecordShell func(RecordedShell) (ShellRecording, error)
}

// Watcher follows what users do on a Server: *lifetime.Lifetime is one.
type Watcher interface {
	// Hook is called once by New with the gliderlabs server, its handlers
	// set, before it serves; it may wrap its callbacks and handlers.
	// watchOnly reports the connections of observers, whose input is
	// no user's activity.
	Hook(srv *ssh.Server, watchOnly func(ssh.Context) bool)
	// Attach is called as each shell or command session starts; the
	// session's handler calls detach as it ends.
	Attach(s ssh.Session) (detach func())
	// Keep is called as a kept shell starts (see keep.go); release is
	// called when it ends. A kept shell with nobody attached still
	// counts.
	Keep() (release func())
	// WatchInput wraps the channels the server opens towards the user
	// itself (ssh -R connections), which Hook does not see.
	WatchInput(ch gossh.Channel) gossh.Channel
}

// nobody is the Watcher of a Config without one.
type nobody struct{}

func (nobody) Hook(*ssh.Server, func(ssh.Context) bool)  {}
func (nobody) Attach(ssh.Session) func()                 { return func() {} }
func (nobody) WatchInput(ch gossh.Channel) gossh.Channel { return ch }
func (nobody) Keep() func()                              { return func() {} }

// Server is the agent's SSH server. Create it with New, serve with Serve,
// stop with Close or Shutdown, then Wait.
type Server struct {
	cfg       Config
	log       *slog.Logger
	watch     Watcher
	auth      *authorizer
	signer    gossh.Signer
	srv       *ssh.Server
	children  *children  // the processes the server waits for itself
	fwd       *forwarder // port forwards (ssh -L, -R)
	shells    shellNames // kept shells
	observers *observers // who may only watch

	sessionSeq atomic.Uint64 // names sessions in the journal
}

// New prepares a server: host key, authorized keys, shell. It refuses to
// start when nobody could log in, and when a key source or the shell
// given cannot be used.
func New(cfg Config) (*Server, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	d := &Server{cfg: cfg, log: cfg.Logger, watch: cfg.Watcher, signer: cfg.HostKey, children: newChildren()}
	var err error
	if d.signer == nil {
		if d.signer, err = LoadHostKey("", nil); err != nil {
			return nil, err
		}
	}
	if d.cfg.Shell, err = resolveShell(cfg.Shell); err != nil {
		return nil, err
	}
	d.auth, err = newAuthorizer(d.cfg, d.log, d.user)
	if err != nil {
		return nil, err
	}
	if d.observers, err = newObservers(d.cfg, d.auth); err != nil {
		return nil, err
	}
	d.auth.observers = d.observers
	d.fwd = &forwarder{log: d.log, watch: d.watch, record: d.recordForward}
	d.srv = d.newSSHServer()
	return d, nil
}

// fill sets the defaults of c.
func (c *Config) fill() error {
	if c.Dir == "" {
		d, err := os.Getwd()
		if err != nil {
			return err
		}
		c.Dir = d
	}
	d, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = d
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Watcher == nil {
		c.Watcher = nobody{}
	}
	if c.Journal == nil {
		c.Journal = journal.New(c.Logger)
	}
	return nil
}

func (d *Server) user() string {
	if d.cfg.User == nil {
		return ""
	}
	return d.cfg.User()
}

// HostKey is the server's SSH host public key.
func (d *Server) HostKey() gossh.PublicKey { return d.signer.PublicKey() }

// Serve accepts connections on ln and serves SSH on each until ln fails
// or the server is closed; it then returns ssh.ErrServerClosed or ln's
// error. It may be called for several listeners.
func (d *Server) Serve(ln net.Listener) error { return d.srv.Serve(ln) }

// Close closes the listeners and every connection at once, hangs up the
// kept shells, and returns without waiting for their handlers; see Wait.
func (d *Server) Close() error {
	err := d.srv.Close()
	d.shells.close()
	return err
}

// Shutdown closes the listeners, then waits until every connection has
// ended by itself or ctx ends, then hangs up the kept shells; see Wait.
func (d *Server) Shutdown(ctx context.Context) error {
	err := d.srv.Shutdown(ctx)
	d.shells.close()
	return err
}

// Wait waits for the port forwards' goroutines, which end with their
// connections, and for the kept shells to end (at most killGrace after
// their hangup): call it after Close or Shutdown.
func (d *Server) Wait() {
	d.fwd.wg.Wait()
	d.shells.wg.Wait()
}

// id is the agent's ID for hints.
func (d *Server) id() string {
	if d.cfg.ID == "" {
		return "ID"
	}
	return d.cfg.ID
}

// newSSHServer builds the gliderlabs server. Authentication always goes
// through the authorizer: a gliderlabs server with no auth handler would
// let everyone in.
func (d *Server) newSSHServer() *ssh.Server {
	srv := &ssh.Server{
		Version:          "Converge_" + d.cfg.Version,
		Handler:          d.handleSession,
		PublicKeyHandler: d.auth.publicKey,
		SubsystemHandlers: map[string]ssh.SubsystemHandler{
			"sftp": d.handleSFTP,
		},
		// Port forwarding in both directions (forward.go).
		ChannelHandlers: map[string]ssh.ChannelHandler{
			"session":                        ssh.DefaultSessionHandler,
			"direct-tcpip":                   d.writersOnly(d.fwd.directTCPIP),
			"direct-streamlocal@openssh.com": d.writersOnly(d.fwd.directStreamLocal),
		},
		RequestHandlers: map[string]ssh.RequestHandler{
			"tcpip-forward":        writersOnlyRequest(d.fwd.tcpipForward),
			"cancel-tcpip-forward": writersOnlyRequest(d.fwd.tcpipForward),
		},
		// Explicit rather than x/crypto's default, which it matches.
		ServerConfigCallback: func(ctx ssh.Context) *gossh.ServerConfig {
			return &gossh.ServerConfig{MaxAuthTries: maxAuthTries, VerifiedPublicKeyCallback: d.auth.verified(ctx)}
		},
		ConnCallback: d.boundHandshake,
	}
	if d.auth.password != "" {
		srv.PasswordHandler = d.auth.passwordOK
	}
	srv.AddHostKey(d.signer)
	d.reportLogins(srv)
	d.watch.Hook(srv, isObserver)
	return srv
}

// boundHandshake closes conn if its handshake has not finished in time;
// gliderlabs stores the ServerConn in ctx once it has.
func (d *Server) boundHandshake(ctx ssh.Context, conn net.Conn) net.Conn {
	t := time.AfterFunc(handshakeTimeout, func() {
		if ctx.Value(ssh.ContextKeyConn) == nil {
			d.log.Warn("ssh handshake timed out", "timeout", handshakeTimeout)
			conn.Close()
		}
	})
	context.AfterFunc(ctx, func() { t.Stop() })
	return conn
}

// connKey is the ssh.Context key of the connection as the listener
// delivered it.
type connKey struct{}

// reportLogins calls Config.OnLogin when SSH has logged a connection's
// user in. Success is x/crypto's AuthLogCallback with a nil error, which
// it calls once per connection, after a verified signature or password;
// the public-key callback is no place for it, as it runs for every key a
// client offers, before any signature. Call it after the server's
// callbacks are set; it wraps them.
func (d *Server) reportLogins(srv *ssh.Server) {
	if d.cfg.OnLogin == nil {
		return
	}
	connCB := srv.ConnCallback
	srv.ConnCallback = func(ctx ssh.Context, conn net.Conn) net.Conn {
		ctx.SetValue(connKey{}, conn) // before any wrapping
		if connCB != nil {
			return connCB(ctx, conn)
		}
		return conn
	}
	configCB := srv.ServerConfigCallback
	srv.ServerConfigCallback = func(ctx ssh.Context) *gossh.ServerConfig {
		cfg := &gossh.ServerConfig{}
		if configCB != nil {
			cfg = configCB(ctx)
		}
		prev := cfg.AuthLogCallback
		cfg.AuthLogCallback = func(m gossh.ConnMetadata, method string, err error) {
			if prev != nil {
				prev(m, method, err)
			}
			if c, ok := ctx.Value(connKey{}).(net.Conn); ok && err == nil {
				d.cfg.OnLogin(c)
			}
		}
		return cfg
	}
}
