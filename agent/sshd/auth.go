package sshd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

const (
	// maxAuthTries bounds the failed authentication attempts of one SSH
	// connection, as sshd's MaxAuthTries; x/crypto/ssh then disconnects.
	// Refused key offers count only once there have been as many again
	// (x/crypto's rule), so a user with several keys in an ssh-agent
	// still gets in.
	maxAuthTries = 6
	// failedPasswordDelay is how long a wrong password keeps its
	// connection waiting for the refusal.
	failedPasswordDelay = time.Second
)

// authorizer decides who may log in: the server's SSH user name with a key
// from the authorized-keys sources, or a password when one was configured.
type authorizer struct {
	log      *slog.Logger
	user     func() string // the server's --ssh-user, learned at registration
	files    []string      // re-read when their content changes
	caFile   string        // --trusted-user-ca-keys, re-read too
	static   []authKey
	password string
	journal  *journal.Journal
	refusals atomic.Int64 // refusals so far, see maxJournalRefusals
	// observers may log in to watch shells (observer.go); set by New.
	observers *observers

	mu    sync.Mutex
	cache map[string]fileKeys
}

// fileKeys is what a file held when it was last parsed.
type fileKeys struct {
	data []byte
	keys []authKey
}

// authKey is one authorized_keys line: a key that may log in, or with
// cert-authority a CA whose certificates may, for the listed principals
// (none listed: the SSH user name).
type authKey struct {
	gossh.PublicKey
	comment    string // the line's comment, e.g. alice@laptop
	source     string // the file or URL it came from
	ca         bool
	principals []string
}

// newAuthorizer gathers the keys of cfg: AuthorizedKeysFiles (read at
// each login), AuthorizedKeys, and the keys at AuthorizedKeysURLs (fetched
// now). Dir/.authorized_keys is read at each login too, but only when none
// of those is given: the directory is usually the checkout, where anyone
// who can open a pull request can add a key. It logs each source with its
// number of keys. It fails when a source given explicitly is unusable, or
// when nobody could log in at all.
func newAuthorizer(cfg Config, log *slog.Logger, user func() string) (*authorizer, error) {
	a := &authorizer{
		log:      log,
		user:     user,
		files:    cfg.AuthorizedKeysFiles,
		password: cfg.Password,
		journal:  cfg.Journal,
		cache:    make(map[string]fileKeys),
	}
	dirFile := filepath.Join(cfg.Dir, ".authorized_keys")
	explicit := len(cfg.AuthorizedKeysFiles) > 0 || cfg.AuthorizedKeys != "" || len(cfg.AuthorizedKeysURLs) > 0 || cfg.TrustedUserCAKeys != ""
	if !explicit {
		a.files = []string{dirFile}
	}
	if cfg.TrustedUserCAKeys != "" {
		if _, err := os.Stat(cfg.TrustedUserCAKeys); err != nil {
			return nil, fmt.Errorf("trusted user CA keys: %w (check the --trusted-user-ca-keys path)", err)
		}
		a.caFile = cfg.TrustedUserCAKeys
		log.Info("trusted user CA keys", "from", a.caFile, "keys", len(a.caKeys()), "reread", "at each login")
	}
	for _, f := range cfg.AuthorizedKeysFiles {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("authorized keys file: %w (check the --authorized-keys path)", err)
		}
	}
	if err := a.addStatic(cfg); err != nil {
		return nil, err
	}
	for _, f := range a.files {
		log.Info("authorized keys", "from", f, "keys", len(a.fileKeys(f)), "reread", "at each login")
	}
	if explicit && !a.reads(dirFile) {
		if _, err := os.Stat(dirFile); err == nil {
			log.Warn("ignoring .authorized_keys in the working directory: other key sources are given; name it with --authorized-keys to use it too", "file", dirFile)
		}
	}
	if a.password != "" {
		log.Info("password logins allowed")
	}
	if !a.configured() {
		return nil, noLoginError(explicit, dirFile)
	}
	return a, nil
}

// addStatic adds the keys given directly and fetched from URLs, logging
// each source.
func (a *authorizer) addStatic(cfg Config) error {
	if cfg.AuthorizedKeys != "" {
		keys, err := parseAuthorizedKeys("--authorized-keys-data", []byte(cfg.AuthorizedKeys))
		if err != nil {
			return err
		}
		a.log.Info("authorized keys", "from", "--authorized-keys-data", "keys", len(keys))
		a.static = append(a.static, keys...)
	}
	for _, u := range cfg.AuthorizedKeysURLs {
		ctx, cancel := context.WithTimeout(context.Background(), keysFetchTimeout)
		keys, err := fetchAuthorizedKeys(ctx, cfg.HTTPClient, u)
		cancel()
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			a.log.Warn("authorized keys URL lists no keys", "url", u)
		}
		a.log.Info("authorized keys", "from", u, "keys", len(keys))
		a.static = append(a.static, keys...)
	}
	return nil
}

// reads reports whether file is among the files read at each login.
func (a *authorizer) reads(file string) bool {
	for _, f := range a.files {
		if abs, err := filepath.Abs(f); err == nil && abs == file {
			return true
		}
	}
	return false
}

// noLoginError says how to let somebody in.
func noLoginError(explicit bool, dirFile string) error {
	if explicit {
		return fmt.Errorf("nobody could log in: the key sources given hold no keys\n"+
			"Add keys to them, or name %s with --authorized-keys to use it too", dirFile)
	}
	return fmt.Errorf("nobody could log in: no keys in %s\n"+
		"Add the public key of each user who may connect, for example:\n"+
		"  echo \"$(cat ~/.ssh/id_ed25519.pub)\" >> %s\n"+
		"or pass --authorized-keys FILE, --authorized-keys-url https://github.com/USER.keys,\n"+
		"or set CONVERGE_AUTHORIZED_KEYS to authorized_keys lines (e.g. from a CI secret)",
		dirFile, dirFile)
}

// parseAuthorizedKeys parses authorized_keys content. Bad lines are
// reported with their line number and skipped; blank lines and comments
// are skipped. The options the agent enforces are cert-authority and,
// with it, principals="..."; a line with any other option (command=,
// from=, restrict, ...) is refused rather than granted more than it says.
func parseAuthorizedKeys(name string, data []byte) ([]authKey, error) {
	var keys []authKey
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, comment, opts, _, err := gossh.ParseAuthorizedKey(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", name, n, err))
			continue
		}
		ak := authKey{PublicKey: k, comment: comment, source: name}
		if err := ak.setOptions(opts); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", name, n, err))
			continue
		}
		keys = append(keys, ak)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", name, err))
	}
	return keys, errors.Join(errs...)
}

// setOptions applies a line's options: cert-authority, and principals=
// with it. Any other option is an error naming it.
func (k *authKey) setOptions(opts []string) error {
	var unknown []string
	for _, o := range opts {
		name, val, hasVal := strings.Cut(o, "=")
		switch {
		case strings.EqualFold(name, "cert-authority") && !hasVal:
			k.ca = true
		case strings.EqualFold(name, "principals") && hasVal:
			for _, p := range strings.Split(strings.Trim(val, `"`), ",") {
				if p = strings.TrimSpace(p); p != "" {
					k.principals = append(k.principals, p)
				}
			}
		default:
			unknown = append(unknown, o)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("key options (%s) are not supported; remove them to authorize the key", strings.Join(unknown, ","))
	}
	if len(k.principals) > 0 && !k.ca {
		return errors.New(`principals="..." is supported only with cert-authority`)
	}
	return nil
}

// keys returns every authorized key, reading the files afresh: a key
// added to .authorized_keys works at the next login, a removed one stops
// working.
func (a *authorizer) keys() []authKey {
	out := append([]authKey(nil), a.static...)
	for _, f := range a.files {
		out = append(out, a.fileKeys(f)...)
	}
	return append(out, a.caKeys()...)
}

// caKeys returns the keys of the --trusted-user-ca-keys file, each a
// certificate authority for the SSH user name, as OpenSSH's
// TrustedUserCAKeys.
func (a *authorizer) caKeys() []authKey {
	if a.caFile == "" {
		return nil
	}
	var out []authKey
	for _, k := range a.fileKeys(a.caFile) {
		k.ca = true
		out = append(out, k)
	}
	return out
}

// fileKeys returns the keys in file f now, parsing it again only when its
// content changed. A missing file holds no keys.
func (a *authorizer) fileKeys(f string) []authKey {
	a.mu.Lock()
	defer a.mu.Unlock()
	data, err := os.ReadFile(f)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("cannot read authorized keys", "file", f, "error", err)
		}
		delete(a.cache, f)
		return nil
	}
	c, ok := a.cache[f]
	if !ok || !bytes.Equal(c.data, data) {
		ks, err := parseAuthorizedKeys(f, data)
		if err != nil { // once per change of the file
			a.log.Warn("skipping bad authorized keys lines", "error", err)
		}
		if ok {
			a.log.Info("authorized keys changed", "file", f, "keys", len(ks))
		}
		c = fileKeys{data: data, keys: ks}
		a.cache[f] = c
	}
	return c.keys
}

// configured reports whether any way to log in exists right now.
func (a *authorizer) configured() bool {
	return a.password != "" || len(a.keys()) > 0
}

// passwordOK checks a password. A refusal comes after
// failedPasswordDelay, which holds up this connection's next try only: with
// maxAuthTries per connection, guessing costs a second per password. A
// success is the login (a password needs no further proof).
func (a *authorizer) passwordOK(ctx ssh.Context, pw string) bool {
	ok := a.userOK(ctx, nil)
	if ok && (a.password == "" || subtle.ConstantTimeCompare([]byte(pw), []byte(a.password)) != 1) {
		a.refused(journal.Entry{Conn: ctxConn(ctx),
			Login: &journal.Login{User: ctx.User(), Method: "password"}, Note: "wrong password"})
		ok = false
	}
	if !ok {
		t := time.NewTimer(failedPasswordDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		return false
	}
	login := &journal.Login{User: ctx.User(), Method: "password"}
	login.Way, login.Client = wayIn(ctx.ClientVersion())
	ctx.SetValue(ssh.ContextKeyPermissions, &ssh.Permissions{Permissions: &gossh.Permissions{ExtraData: map[any]any{identityKey{}: login}}})
	a.loggedIn(ctx, ctxConn(ctx), login)
	return true
}

// userOK checks the user name; key is the key offered, nil for a
// password.
func (a *authorizer) userOK(ctx ssh.Context, key ssh.PublicKey) bool {
	want := a.user()
	if want == "" || subtle.ConstantTimeCompare([]byte(ctx.User()), []byte(want)) != 1 {
		why := fmt.Sprintf("wrong user name (want %q)", want)
		if key != nil {
			a.refuse(ctx, key, why)
		} else {
			a.refused(journal.Entry{Conn: ctxConn(ctx),
				Login: &journal.Login{User: ctx.User(), Method: "password"}, Note: why})
		}
		return false
	}
	return true
}
