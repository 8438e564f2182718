package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/converge-ci/converge/agent/statedir"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestStateDirSymlinkRefused: an agent whose state folder is a symlink
// stops before it connects, and New leaves no files behind (--detach's
// parent calls it).
func TestStateDirSymlinkRefused(t *testing.T) {
	base := t.TempDir()
	os.Mkdir(filepath.Join(base, "elsewhere"), 0o700)
	link := filepath.Join(base, "state")
	if err := os.Symlink(filepath.Join(base, "elsewhere"), link); err != nil {
		t.Fatal(err)
	}
	_, line := sshtest.NewKey(t, "someone")
	a, err := New(Config{Server: "ws://127.0.0.1:1", Dir: t.TempDir(), AuthorizedKeys: line, Logger: quietLog(), StateDir: link})
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(base, "elsewhere")); len(entries) > 0 {
		t.Errorf("New wrote %d files in the state folder", len(entries))
	}
	if err := a.Run(context.Background()); !errors.Is(err, statedir.ErrUnsafe) {
		t.Errorf("Run with a symlinked state folder: %v, want ErrUnsafe", err)
	}
}
