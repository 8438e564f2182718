package sshd

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Observers: keys from their own sources (--observer-keys) log in as the
// same SSH user, but may only watch kept shells: attach read-only and
// list. They cannot start a shell or run a command, forward ports, open
// SFTP or forward an agent; their keystrokes never reach a shell.

// observerExt is the gossh.Permissions extension that marks an
// observer's login.
const observerExt = "converge-observer"

// observers holds the observer keys: files re-read at each login (through
// the authorizer's cache), lines given directly, keys fetched from URLs
// at start.
type observers struct {
	a      *authorizer
	files  []string
	static []authKey
}

// newObservers gathers the observer key sources of cfg; a URL that cannot
// be fetched is an error, as for authorized keys.
func newObservers(cfg Config, a *authorizer) (*observers, error) {
	o := &observers{a: a, files: cfg.ObserverKeysFiles}
	if cfg.ObserverKeys != "" {
		keys, err := parseAuthorizedKeys("--observer-keys-data", []byte(cfg.ObserverKeys))
		if err != nil {
			return nil, fmt.Errorf("observer keys: %w", err)
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
		o.static = append(o.static, keys...)
	}
	for _, f := range o.files {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("observer keys file: %w (check the --observer-keys path)", err)
		}
	}
	if n := len(o.all()); n > 0 || len(o.files) > 0 {
		a.log.Info("observer keys: these may only watch shells, read-only", "keys", n, "files", len(o.files), "urls", len(cfg.ObserverKeysURLs))
	}
	return o, nil
}

// all returns every observer key, reading the files afresh.
func (o *observers) all() []authKey {
	out := slices.Clone(o.static)
	for _, f := range o.files {
		out = append(out, o.a.fileKeys(f)...)
	}
	return out
}

// find returns the observer key that is key, if any. Lines with
// cert-authority do not make observers.
func (o *observers) find(key ssh.PublicKey) (authKey, bool) {
	if o == nil {
		return authKey{}, false
	}
	for _, k := range o.all() {
		if !k.ca && sameKey(k.PublicKey, key) {
			return k, true
		}
	}
	return authKey{}, false
}

// isObserver reports whether the connection of ctx logged in with an
// observer key. It reads the Permissions x/crypto kept for the key whose
// signature it verified, never what the public-key callback saw last.
func isObserver(ctx ssh.Context) bool {
	conn, ok := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if !ok || conn.Permissions == nil {
		return false
	}
	_, ok = conn.Permissions.Extensions[observerExt]
	return ok
}

// observerPermissions is the Permissions of an accepted observer key.
func observerPermissions() *gossh.Permissions {
	return &gossh.Permissions{Extensions: map[string]string{observerExt: "yes"}}
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
