package agent

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// authorizer decides who may log in: the server's SSH user name with a key
// from the authorized-keys sources, or a password when one was configured.
type authorizer struct {
	log      *slog.Logger
	user     func() string // the server's --ssh-user, learned at registration
	files    []string      // re-read when their mtime or size changes
	static   []gossh.PublicKey
	password string

	mu    sync.Mutex
	cache map[string]fileKeys
}

type fileKeys struct {
	mod  time.Time
	size int64
	keys []gossh.PublicKey
}

// parseAuthorizedKeys parses authorized_keys content. Bad lines are
// reported with their line number; blank lines and comments are skipped.
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
		k, _, _, _, err := gossh.ParseAuthorizedKey(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", name, n, err))
			continue
		}
		keys = append(keys, k)
	}
	return keys, errors.Join(errs...)
}

// keys returns every authorized key, re-reading changed files.
func (a *authorizer) keys() []gossh.PublicKey {
	out := append([]gossh.PublicKey(nil), a.static...)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, f := range a.files {
		st, err := os.Stat(f)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				a.log.Warn("cannot read authorized keys", "file", f, "error", err)
			}
			delete(a.cache, f)
			continue
		}
		c, ok := a.cache[f]
		if !ok || !c.mod.Equal(st.ModTime()) || c.size != st.Size() {
			data, err := os.ReadFile(f)
			if err != nil {
				a.log.Warn("cannot read authorized keys", "file", f, "error", err)
				continue
			}
			ks, err := parseAuthorizedKeys(f, data)
			if err != nil {
				a.log.Warn("skipping bad authorized keys lines", "error", err)
			}
			c = fileKeys{mod: st.ModTime(), size: st.Size(), keys: ks}
			a.cache[f] = c
		}
		out = append(out, c.keys...)
	}
	return out
}

// configured reports whether any way to log in exists right now.
func (a *authorizer) configured() bool {
	return a.password != "" || len(a.keys()) > 0
}

func (a *authorizer) publicKey(ctx ssh.Context, key ssh.PublicKey) bool {
	if !a.userOK(ctx) {
		return false
	}
	for _, k := range a.keys() {
		if subtle.ConstantTimeCompare(k.Marshal(), key.Marshal()) == 1 {
			return true
		}
	}
	a.log.Warn("login refused: key not authorized", "user", ctx.User(), "key", gossh.FingerprintSHA256(key), "type", key.Type())
	return false
}

func (a *authorizer) passwordOK(ctx ssh.Context, pw string) bool {
	if !a.userOK(ctx) {
		return false
	}
	if a.password == "" || subtle.ConstantTimeCompare([]byte(pw), []byte(a.password)) != 1 {
		a.log.Warn("login refused: wrong password", "user", ctx.User())
		return false
	}
	return true
}

func (a *authorizer) userOK(ctx ssh.Context) bool {
	want := a.user()
	if want == "" || subtle.ConstantTimeCompare([]byte(ctx.User()), []byte(want)) != 1 {
		a.log.Warn("login refused: wrong user name", "user", ctx.User(), "want", want)
		return false
	}
	return true
}
