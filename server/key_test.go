package server

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/server/internal/registry"
)

func TestClusterKeyValidated(t *testing.T) {
	cfg := Config{ClusterKey: "too-short"}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "CONVERGE_CLUSTER_KEY") {
		t.Fatalf("Validate with a bad cluster key: %v; want an error naming CONVERGE_CLUSTER_KEY", err)
	}
}

// TestServersShareStateDirKey: a server started again on the same state
// directory verifies the secrets the first one signed.
func TestServersShareStateDirKey(t *testing.T) {
	dir := t.TempDir()
	first := newTestServer(t, func(c *Config) { c.StateDir = dir })
	second := newTestServer(t, func(c *Config) { c.StateDir = dir })
	other := newTestServer(t)
	tok := first.tokens.Sign("job", registry.NewTenure(time.Now()), time.Now())
	if _, err := second.tokens.Verify("job", tok, time.Now()); err != nil {
		t.Errorf("the restarted server does not verify the first one's token: %v", err)
	}
	if _, err := other.tokens.Verify("job", tok, time.Now()); err == nil {
		t.Error("a server with a key of its own verifies another's token")
	}
}

// TestWeakClusterKeyWarned: a cluster key that is a pattern (all zeros,
// or a few bytes repeated) starts the server, with a warning in its log;
// a random one does not warn (issue 18, finding 10).
func TestWeakClusterKeyWarned(t *testing.T) {
	for _, tc := range []struct {
		key  string
		weak bool
	}{
		{strings.Repeat("00", 32), true},
		{strings.Repeat("c0ffee00", 8), true},
		{"9f2c4e8a1b7d3f6052e1c9a4d8b3f70e6a5c2d1b9e8f7a4c3d2e1f0a9b8c7d6e", false},
	} {
		var logs strings.Builder
		var mu sync.Mutex
		newTestServer(t, func(c *Config) {
			c.ClusterKey = tc.key
			c.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
		})
		mu.Lock()
		warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "cluster key")
		mu.Unlock()
		if warned != tc.weak {
			t.Errorf("cluster key %s: warned %v, want %v\n%s", tc.key, warned, tc.weak, logs.String())
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestStateDirWritableByOthersWarned: a state directory other users may
// write to (where they could swap the server key) is warned about
// (issue 18, finding 10); a private one is not.
func TestStateDirWritableByOthersWarned(t *testing.T) {
	for _, mode := range []os.FileMode{0o700, 0o777} {
		dir := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		var mu sync.Mutex
		newTestServer(t, func(c *Config) {
			c.StateDir = dir
			c.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
		})
		mu.Lock()
		warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "chmod 700")
		mu.Unlock()
		if want := mode&0o022 != 0; warned != want {
			t.Errorf("state directory of mode %v: warned %v, want %v\n%s", mode, warned, want, logs.String())
		}
	}
}
