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
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
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
	static   []gossh.PublicKey
	password string
	// observers may log in to watch shells (observer.go); set by New.
	observers *observers

	mu    sync.Mutex
	cache map[string]fileKeys
}

// fileKeys is what a file held when it was last parsed.
type fileKeys struct {
	data []byte
	keys []gossh.PublicKey
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
		cache:    make(map[string]fileKeys),
	}
	dirFile := filepath.Join(cfg.Dir, ".authorized_keys")
	explicit := len(cfg.AuthorizedKeysFiles) > 0 || cfg.AuthorizedKeys != "" || len(cfg.AuthorizedKeysURLs) > 0
	if !explicit {
		a.files = []string{dirFile}
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
		keys, err := parseAuthorizedKeys("authorized keys data (--authorized-keys-data)", []byte(cfg.AuthorizedKeys))
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
// are skipped. Lines with options (command=, from=, restrict, ...) are
// refused rather than granted more than they say: the agent does not
// enforce options.
func parseAuthorizedKeys(name string, data []byte) ([]gossh.PublicKey, error) {
	var keys []gossh.PublicKey
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, _, opts, _, err := gossh.ParseAuthorizedKey(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", name, n, err))
			continue
		}
		if len(opts) > 0 {
			errs = append(errs, fmt.Errorf("%s:%d: key options (%s) are not supported; remove them to authorize the key", name, n, strings.Join(opts, ",")))
			continue
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", name, err))
	}
	return keys, errors.Join(errs...)
}

// keys returns every authorized key, reading the files afresh: a key
// added to .authorized_keys works at the next login, a removed one stops
// working.
func (a *authorizer) keys() []gossh.PublicKey {
	out := append([]gossh.PublicKey(nil), a.static...)
	for _, f := range a.files {
		out = append(out, a.fileKeys(f)...)
	}
	return out
}

// fileKeys returns the keys in file f now, parsing it again only when its
// content changed. A missing file holds no keys.
func (a *authorizer) fileKeys(f string) []gossh.PublicKey {
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

// publicKey runs for every key a client offers, not only the one that
// finally logs in; it must not remember keys.
func (a *authorizer) publicKey(ctx ssh.Context, key ssh.PublicKey) bool {
	if !a.userOK(ctx) {
		return false
	}
	for _, k := range a.keys() {
		if subtle.ConstantTimeCompare(k.Marshal(), key.Marshal()) == 1 {
			// A Permissions of its own for each key: x/crypto keeps the
			// one of the key whose signature it verifies.
			ctx.SetValue(ssh.ContextKeyPermissions, &ssh.Permissions{Permissions: &gossh.Permissions{}})
			return true
		}
	}
	if name, ok := a.observers.find(key); ok {
		ctx.SetValue(ssh.ContextKeyPermissions, &ssh.Permissions{Permissions: observerPermissions(name + " (" + gossh.FingerprintSHA256(key) + ")")})
		return true
	}
	a.log.Warn("login refused: key not authorized", "user", ctx.User(), "key", gossh.FingerprintSHA256(key), "type", key.Type())
	return false
}

// passwordOK checks a password. A refusal comes after
// failedPasswordDelay, which holds up this connection's next try only: with
// maxAuthTries per connection, guessing costs a second per password.
func (a *authorizer) passwordOK(ctx ssh.Context, pw string) bool {
	ok := a.userOK(ctx)
	if ok && (a.password == "" || subtle.ConstantTimeCompare([]byte(pw), []byte(a.password)) != 1) {
		a.log.Warn("login refused: wrong password", "user", ctx.User())
		ok = false
	}
	if !ok {
		t := time.NewTimer(failedPasswordDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return ok
}

func (a *authorizer) userOK(ctx ssh.Context) bool {
	want := a.user()
	if want == "" || subtle.ConstantTimeCompare([]byte(ctx.User()), []byte(want)) != 1 {
		a.log.Warn("login refused: wrong user name", "user", ctx.User(), "want", want)
		return false
	}
	return true
}
