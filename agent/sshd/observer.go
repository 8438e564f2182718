package sshd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Observers: keys from their own sources (--observer-keys) log in as the
// same SSH user, but may only watch kept shells: attach read-only and
// list. They cannot start a shell or run a command, forward ports, open
// SFTP or forward an agent; their keystrokes never reach a shell.

// observerExt is the gossh.Permissions extension that marks an observer's
// login; its value is the observer's name.
const observerExt = "converge-observer"

// observerKey is one key an observer may log in with, and the name join
// lines show: its comment, or for keys from a URL such as a forge's
// https://github.com/alice.keys, alice@github.com.
type observerKey struct {
	key  gossh.PublicKey
	name string
}

// observers holds the observer keys: files re-read at each login (through
// the authorizer's cache), lines given directly, keys fetched from URLs
// at start.
type observers struct {
	a      *authorizer
	files  []string
	static []observerKey
}

// newObservers gathers the observer key sources of cfg; a URL that cannot
// be fetched is an error, as for authorized keys.
func newObservers(cfg Config, a *authorizer) (*observers, error) {
	o := &observers{a: a, files: cfg.ObserverKeysFiles}
	if cfg.ObserverKeys != "" {
		keys, err := parseObserverKeys("observer keys data", "", []byte(cfg.ObserverKeys))
		if err != nil {
			return nil, err
		}
		o.static = append(o.static, keys...)
	}
	for _, u := range cfg.ObserverKeysURLs {
		ctx, cancel := context.WithTimeout(context.Background(), keysFetchTimeout)
		keys, err := fetchAuthorizedKeys(ctx, cfg.HTTPClient, u)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("observer keys: %w", err)
		}
		for _, k := range keys {
			o.static = append(o.static, observerKey{key: keyOf(k), name: urlName(u)})
		}
	}
	n := len(o.static)
	for _, f := range o.files {
		n += len(o.fileKeys(f))
	}
	if n > 0 || len(o.files) > 0 {
		a.log.Info("observer keys: these may only watch shells, read-only", "keys", n, "files", len(o.files), "urls", len(cfg.ObserverKeysURLs))
	}
	return o, nil
}

// urlName names a key from a URL: user@host for https://host/user.keys.
func urlName(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return strings.TrimSuffix(path.Base(u.Path), ".keys") + "@" + u.Hostname()
}

// fileKeys parses file f (read at each login; a missing file holds none).
func (o *observers) fileKeys(f string) []observerKey {
	data, err := os.ReadFile(f)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			o.a.log.Warn("cannot read observer keys", "file", f, "error", err)
		}
		return nil
	}
	keys, err := parseObserverKeys(f, "", data)
	if err != nil {
		o.a.log.Warn("skipping bad observer key lines", "error", err)
	}
	return keys
}

// find returns the observer name of key, if it is an observer key.
func (o *observers) find(key ssh.PublicKey) (string, bool) {
	if o == nil {
		return "", false
	}
	all := o.static
	for _, f := range o.files {
		all = append(all, o.fileKeys(f)...)
	}
	for _, k := range all {
		if equalKeys(k.key, key) {
			return k.name, true
		}
	}
	return "", false
}

// keyOf is a fetched key as a plain public key.
func keyOf(k gossh.PublicKey) gossh.PublicKey { return k }

func equalKeys(a, b gossh.PublicKey) bool {
	return subtle.ConstantTimeCompare(a.Marshal(), b.Marshal()) == 1
}

// parseObserverKeys parses authorized_keys lines, keeping each comment
// (or fallback) as the name. Options are refused as for authorized keys.
func parseObserverKeys(name, fallback string, data []byte) ([]observerKey, error) {
	var keys []observerKey
	var errs []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, comment, opts, _, err := gossh.ParseAuthorizedKey(line)
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("%s:%d: %v", name, n, err))
		case len(opts) > 0:
			errs = append(errs, fmt.Sprintf("%s:%d: key options are not supported for observers", name, n))
		default:
			if comment == "" {
				comment = fallback
			}
			if comment == "" {
				comment = "observer"
			}
			keys = append(keys, observerKey{key: k, name: comment})
		}
	}
	if len(errs) > 0 {
		return keys, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return keys, nil
}

// isObserver reports whether the connection of ctx logged in with an
// observer key. It reads the Permissions x/crypto kept for the key whose
// signature it verified, never what the public-key callback saw last.
func isObserver(ctx ssh.Context) bool {
	_, ok := observerName(ctx)
	return ok
}

func observerName(ctx ssh.Context) (string, bool) {
	conn, ok := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if !ok || conn.Permissions == nil {
		return "", false
	}
	name, ok := conn.Permissions.Extensions[observerExt]
	return name, ok
}

// observerPermissions is the Permissions of an accepted observer key.
func observerPermissions(name string) *gossh.Permissions {
	return &gossh.Permissions{Extensions: map[string]string{observerExt: name}}
}

// readOnly is what an observer is told when it asks for more than
// watching.
func (d *Server) readOnly(what string) string {
	return fmt.Sprintf("converge: %s refused: you logged in with an observer key, which may only watch shells: ssh -t %s attach (ssh %s ls lists them)", what, d.id(), d.id())
}

// writersOnly wraps a channel handler (port forwards) to refuse
// observers.
func (d *Server) writersOnly(h ssh.ChannelHandler) ssh.ChannelHandler {
	return func(srv *ssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
		if isObserver(ctx) {
			nc.Reject(gossh.Prohibited, d.readOnly("port forwarding"))
			return
		}
		h(srv, conn, nc, ctx)
	}
}

// writersOnlyRequest wraps a global request handler (ssh -R) to refuse
// observers.
func writersOnlyRequest(h ssh.RequestHandler) ssh.RequestHandler {
	return func(ctx ssh.Context, srv *ssh.Server, req *gossh.Request) (bool, []byte) {
		if isObserver(ctx) {
			return false, nil
		}
		return h(ctx, srv, req)
	}
}
