// Package agent is the CI-side program of Converge: it dials out to the
// rendezvous server, registers a rendezvous ID, and hands the client
// streams the server sends its way, as a net.Listener, to the embedded SSH
// server (package agent/sshd: shells, commands, SFTP, forwarding). It is
// the link (control connection, streams, pool, resumption), not the SSH
// server. It never listens on the network: its one listening socket is
// the converge command's Unix socket in its private 0700 state folder
// (package agent/ctl), which only sessions it started can use. How long it runs (expiry, .hold,
// the last logout, `agent wait`) is package agent/lifetime's to decide.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/ctl"
	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/agent/receipt"
	"github.com/converge-ci/converge/agent/recording"
	"github.com/converge-ci/converge/agent/sshd"
	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Config of an agent. Validate fills defaults.
type Config struct {
	// Server is the rendezvous server's base URL, ws://host[:port] or
	// wss://host[:port], optionally with a path prefix (wss://host/converge
	// for a server under a sub-path): every endpoint's path is appended
	// to it. Required.
	Server string
	// ID is the rendezvous ID. Default: a random, readable one.
	ID string
	// Dir is the working directory of sessions, and where .authorized_keys
	// is read from when no other key source is given. Default: the current
	// directory.
	Dir string
	// AuthorizedKeysFiles are read at each login. When any of
	// AuthorizedKeysFiles, AuthorizedKeys and AuthorizedKeysURLs is set,
	// Dir/.authorized_keys is read only if listed here: Dir is usually a
	// checkout, which a pull request can change.
	AuthorizedKeysFiles []string
	// AuthorizedKeys holds authorized_keys lines given directly (for CI
	// secrets in an environment variable).
	AuthorizedKeys string
	// AuthorizedKeysURLs are fetched once by New, such as a forge's
	// https://github.com/USER.keys; a failed fetch fails New.
	AuthorizedKeysURLs []string
	// ObserverKeysFiles, ObserverKeys and ObserverKeysURLs are the
	// observers' key sources, read as their AuthorizedKeys twins: these
	// keys may only watch kept shells, read-only. Nil, empty: none.
	ObserverKeysFiles []string
	ObserverKeys      string
	ObserverKeysURLs  []string
	// HTTPClient fetches AuthorizedKeysURLs. Default http.DefaultClient.
	HTTPClient *http.Client
	// Password, when set, also allows password logins. Empty: keys only.
	Password string
	// Shell runs sessions and commands: a path or a name looked up in PATH.
	// Default: $SHELL, else bash, else sh; on Windows PowerShell, else
	// cmd.exe ("cmd" chooses cmd.exe).
	Shell string
	// step is `agent run`'s step (RunStep sets it); nil for a plain agent.
	step *Breakpoint
	// SessionEnv is added (KEY=value) to every session's environment, after
	// the agent's own less its secrets (see sshd.Config.Env). Nil: nothing.
	SessionEnv []string
	// HostKeyFile or HostKeyPEM supply the host key; default a fresh
	// ed25519 key per run.
	HostKeyFile string
	HostKeyPEM  []byte
	// Out receives the instructions for users (ssh commands, host key).
	// Default os.Stdout.
	Out io.Writer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Version is announced to the server and in the SSH banner.
	Version string
	// ResumeWindow is how long a resumable client stream waits for its
	// client to reconnect after a drop. Default 2 minutes.
	ResumeWindow time.Duration
	// NoStreamPool makes the agent speak control protocol v1 only, as
	// agents did before stream pools: the server then asks it to dial
	// back for every client and never for idle streams. Default false:
	// the agent keeps the idle streams a server that pools asks for.
	NoStreamPool bool
	// Lifetime bounds how long Run runs. Zero: until ctx ends.
	Lifetime lifetime.Config
	// StateFile makes the agent record its state in Dir/.converge for
	// `agent wait` and --detach, and follow wait's request. False: no files.
	StateFile bool
	// AgentToken is a shared registration token for a server that asks
	// for one (converge --agent-token-file). Default "": none.
	AgentToken string
	// IDToken is an OIDC identity token from the CI system (GitLab's
	// id_tokens:, minted for the server's URL, see Audience), for a server
	// that checks them (converge --oidc-issuer). Default "": on GitHub
	// Actions with `id-token: write`, the agent asks GitHub for one for
	// each connection; elsewhere none.
	IDToken string
	// githubOIDC is set by Validate from the environment.
	githubOIDC githubOIDC
	// StateDir is the agent's private folder: the journal
	// (journal.jsonl), the converge command's socket and bin/. Empty: with
	// StateFile, statedir.Choose's ($RUNNER_TEMP/converge-ID,
	// $XDG_STATE_HOME/converge/ID, else Dir/.converge/ID); without, a
	// temporary folder removed when Run returns.
	StateDir string
	// Executable is the agent binary that sessions reach as `converge`.
	// Empty: os.Executable() (tests running the agent in-process give
	// the built agent binary).
	Executable string
	// TrustedUserCAKeys is a file of SSH certificate authorities whose
	// user certificates log in (see sshd.Config). Empty: none.
	TrustedUserCAKeys string
	// RecordTo turns on the recording of every interactive shell,
	// encrypted to the keys it names: a file of age recipients (age1...)
	// or SSH public keys (ssh-ed25519, ssh-rsa), an https URL of them
	// (https://github.com/USER.keys, fetched once by New), or the lines
	// themselves. Empty: no recordings.
	RecordTo string
	// RecordDir holds the recordings and the signed receipt. Empty:
	// recordings/ in the state folder.
	RecordDir string
	// RecordInput records what users type too. False: output and window
	// sizes only (passwords typed at a prompt are not kept).
	RecordInput bool
	// EncryptReceipt encrypts the receipt to RecordTo's keys too. False:
	// plaintext (it holds no typed text).
	EncryptReceipt bool
	// OnRegistered, if set, is called each time the server welcomes the
	// agent: on the first registration, after Out has the instructions,
	// and again on every re-registration after the link dropped (a server
	// restart, say). It runs on Run's control goroutine, which serves no
	// client until it returns, so it must not block. Nil: nothing is
	// called.
	OnRegistered func()
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.Server == "" {
		return errors.New("no server URL given: pass the rendezvous server, e.g. wss://converge.example.com")
	}
	c.Server = strings.TrimRight(c.Server, "/")
	c.githubOIDC = githubOIDCFromEnv()
	if err := wsconn.CheckURL(c.Server); err != nil {
		return err
	}
	// The endpoints' paths are appended to Server, so a path prefix
	// (wss://host/converge) is kept, and a query or fragment would break them.
	if strings.ContainsAny(c.Server, "?#") {
		return fmt.Errorf("bad URL %q: a server URL has no ?query or #fragment; give ws[s]://host[:port][/path]", c.Server)
	}
	if c.ID == "" {
		c.ID = wire.NewID()
	}
	if err := wire.ValidID(c.ID); err != nil {
		return err
	}
	if c.Dir == "" {
		d, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
		c.Dir = d
	}
	d, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = d
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return c.Lifetime.Validate()
}

// Agent is one running agent. Create it with New, run it with Run.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	signer gossh.Signer
	ssh    *sshd.Server
	ln     *streamListener
	life   *lifetime.Lifetime

	user   atomic.Pointer[string] // SSH user name, learned from the server
	secret string                 // registration secret; control loop only

	pid1 bool // reap orphans while Run runs: true when PID 1

	step *Breakpoint // `agent run`'s step; nil for a plain agent. Set before Run.

	stateDir  string           // private: journal, socket, bin/
	removeDir bool             // stateDir is temporary
	journal   *journal.Journal // what happened in the job
	ctl       *ctl.Server      // the converge command's socket
	bin       *ctl.Bin         // the converge command

	recipients []age.Recipient     // RecordTo's keys; nil: no recordings
	recorder   *recording.Recorder // set by Run's openState when recipients
	receipt    *receipt.Writer     // the signed journal; set by openState

	streams sync.WaitGroup   // stream dials in flight
	raw     *leg.Fallback    // whether the server takes raw streams (see openStream)
	resumed *resume.Acceptor // resumable client streams
}

// New prepares an agent: host key, authorized keys, SSH server. It refuses
// to start when nobody could log in.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("component", "agent", "id", cfg.ID), ln: newStreamListener(),
		pid1: os.Getpid() == 1, raw: &leg.Fallback{For: wsOnlyFor}}
	signer, err := sshd.LoadHostKey(cfg.HostKeyFile, cfg.HostKeyPEM)
	if err != nil {
		return nil, err
	}
	a.signer = signer
	if cfg.RecordTo != "" {
		rs, skipped, err := loadRecipients(cfg.RecordTo, cfg.HTTPClient)
		if err != nil {
			return nil, err
		}
		if len(skipped) > 0 {
			a.log.Warn("--record-to: keys that cannot be age recipients are left out", "keys", skipped)
		}
		a.recipients = rs
	} else if cfg.EncryptReceipt {
		return nil, errors.New("--encrypt-receipt needs --record-to: the keys to encrypt it to")
	}
	a.resumed, err = resume.NewAcceptor(resume.Config{Window: cfg.ResumeWindow, Logger: a.log})
	if err != nil {
		return nil, err
	}
	if wsconn.PlainTextRemote(cfg.Server) {
		a.log.Warn("the server URL is plain ws:// to another machine: anyone on the path can watch and cut the agent's registration (SSH sessions stay end to end encrypted); use wss://", "server", cfg.Server)
	}
	var state *lifetime.StateFile
	if cfg.StateFile {
		state = lifetime.NewStateFile(cfg.Dir, cfg.ID, cfg.Server, a.log)
	}
	a.life = lifetime.New(cfg.Lifetime, cfg.Dir, a.log, state)
	a.journal = journal.New(a.log)
	a.journal.Append(journal.Entry{Kind: journal.KindStart,
		Note: fmt.Sprintf("id=%s hostkey=%s version=%s", cfg.ID, gossh.FingerprintSHA256(signer.PublicKey()), cfg.Version)})
	a.step = cfg.step // before openState (in Run), which lists the step's commands
	if a.step != nil {
		a.step.life = a.life
	}
	a.ssh, err = sshd.New(sshd.Config{
		Dir:                 cfg.Dir,
		AuthorizedKeysFiles: cfg.AuthorizedKeysFiles,
		AuthorizedKeys:      cfg.AuthorizedKeys,
		AuthorizedKeysURLs:  cfg.AuthorizedKeysURLs,
		HTTPClient:          cfg.HTTPClient,
		Password:            cfg.Password,
		Shell:               cfg.Shell,
		Env:                 cfg.SessionEnv,
		HostKey:             signer,
		User:                a.sshUser,
		Version:             cfg.Version,
		Logger:              a.log,
		Watcher:             a.life,
		OnLogin:             confirmLogin,
		ID:                  cfg.ID,
		ObserverKeysFiles:   cfg.ObserverKeysFiles,
		ObserverKeys:        cfg.ObserverKeys,
		ObserverKeysURLs:    cfg.ObserverKeysURLs,
		TrustedUserCAKeys:   cfg.TrustedUserCAKeys,
		Journal:             a.journal,
		SessionEnv:          a.sessionEnv,
		RecordShell:         a.recordShell,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// HostKey is the agent's SSH host public key.
func (a *Agent) HostKey() gossh.PublicKey { return a.signer.PublicKey() }

func (a *Agent) sshUser() string {
	if u := a.user.Load(); u != nil {
		return *u
	}
	return ""
}

// Run connects to the server and serves SSH until ctx ends, the server
// refuses the agent, or Config.Lifetime ends it. It first makes the
// agent's state folder (see Config.StateDir), and fails when it cannot
// be made safely. It reconnects by itself
// when the link drops. Open sessions are told why they end, then closed.
// It returns nil when the agent ended normally (ctx, last logout, expiry)
// and an error wrapping lifetime.ErrNoLogin when nobody logged in in time;
// see lifetime.Config.ExitStatus.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.openState(); err != nil {
		return err
	}
	stopReaper := a.reapWhilePID1(ctx)
	defer stopReaper()
	ctx, life := a.life.Start(ctx)
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.ssh.Serve(a.ln) }()

	err := a.connectLoop(ctx)

	err = life.End(err)
	a.ln.Close()
	a.ssh.Close()
	<-serveErr
	// Let closed sessions deliver their last bytes (exit status, the
	// reason the agent ends) if their client is connected.
	a.resumed.Shutdown(2 * time.Second)
	a.streams.Wait()
	a.ssh.Wait()
	err = life.Exit(err)
	reason := "ended"
	if err != nil {
		reason = err.Error()
	}
	a.closeState(reason)
	return err
}

// reapWhilePID1 reaps orphans (see sshd.Server.ReapOrphans) when the
// agent is PID 1, as in a container started as `docker run IMAGE agent`,
// where nobody else would, until the returned stop is called.
func (a *Agent) reapWhilePID1(ctx context.Context) (stop func()) {
	if !a.pid1 {
		return func() {}
	}
	a.log.Info("running as PID 1: reaping orphaned processes")
	return a.ssh.ReapOrphans(ctx)
}

// Shells lists the kept shells of the agent's SSH server.
func (a *Agent) Shells() []sshd.ShellInfo { return a.ssh.Shells() }

// Serve serves the agent's SSH server on ln directly, bypassing the relay.
// It is for benchmarks that measure the relay against a direct path; the
// agent itself never listens.
func (a *Agent) Serve(ln net.Listener) error { return a.ssh.Serve(ln) }

// SetSSHUser sets the accepted user name before the server has said it
// (for Serve without a relay).
func (a *Agent) SetSSHUser(u string) { a.user.Store(&u) }
