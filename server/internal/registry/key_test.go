package registry

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xfb, 0xff, 0x01}, 11) // 33 bytes; base64 of it has + and /
	for _, tc := range []struct {
		in      string
		want    []byte
		errSays string
	}{
		{hex.EncodeToString(raw), raw, ""},
		{strings.ToUpper(hex.EncodeToString(raw)), raw, ""},
		{" " + hex.EncodeToString(raw) + "\n", raw, ""},
		{base64.StdEncoding.EncodeToString(raw), raw, ""},
		{base64.RawStdEncoding.EncodeToString(raw[:32]), raw[:32], ""},
		{base64.URLEncoding.EncodeToString(raw), raw, ""},
		{base64.RawURLEncoding.EncodeToString(raw[:32]), raw[:32], ""},
		{"", nil, "empty"},
		{hex.EncodeToString(raw[:31]), nil, "31 bytes long, at least 32"},
		{base64.StdEncoding.EncodeToString(raw[:16]), nil, "16 bytes long"},
		{"correct horse battery staple, but longer than 32 bytes", nil, "neither hex nor base64"},
	} {
		got, err := ParseKey(tc.in)
		switch {
		case tc.errSays != "" && (err == nil || !strings.Contains(err.Error(), tc.errSays)):
			t.Errorf("ParseKey(%q) = %x, %v; want an error saying %q", tc.in, got, err, tc.errSays)
		case tc.errSays == "" && (err != nil || !bytes.Equal(got, tc.want)):
			t.Errorf("ParseKey(%q) = %x, %v; want %x", tc.in, got, err, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), "openssl rand -hex 32") {
			t.Errorf("ParseKey(%q): %v; the error should say how to make a key", tc.in, err)
		}
	}
}

// TestKeyFileMadeOnceAndKept: the first server makes its key, 0600 in a
// 0700 directory; the next reads the same key back.
func TestKeyFileMadeOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "converge")
	key, created, err := LoadKey(dir)
	if err != nil || !created || len(key) != MinKeyBytes {
		t.Fatalf("first loadKey = %d bytes, created %v, %v; want a new %d-byte key", len(key), created, err, MinKeyBytes)
	}
	again, created, err := LoadKey(dir)
	if err != nil || created || !bytes.Equal(again, key) {
		t.Fatalf("second loadKey = %x, created %v, %v; want the same key %x", again, created, err, key)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != keyFile {
		t.Errorf("state directory holds %v; want only %s", entries, keyFile)
	}
	if runtime.GOOS == "windows" {
		return
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, keyFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %v, want %v", path, got, want)
		}
	}
}

func TestKeyFileRefusals(t *testing.T) {
	t.Run("readable by others", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("file modes are a Unix notion")
		}
		dir := t.TempDir()
		if _, _, err := LoadKey(dir); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, keyFile)
		os.Chmod(path, 0o644)
		if _, _, err := LoadKey(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("loadKey with a key readable by others: %v; want an error saying chmod 600", err)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, keyFile), []byte("abc\n"), 0o600)
		if _, _, err := LoadKey(dir); err == nil || !strings.Contains(err.Error(), "delete it") {
			t.Fatalf("loadKey with a damaged key: %v; want an error saying what to do", err)
		}
	})
	t.Run("directory cannot be made", func(t *testing.T) {
		// A file where a directory should be stops root too.
		parent := filepath.Join(t.TempDir(), "not-a-directory")
		os.WriteFile(parent, nil, 0o600)
		_, _, err := LoadKey(filepath.Join(parent, "converge"))
		if err == nil || !strings.Contains(err.Error(), "--state-dir") || !strings.Contains(err.Error(), "CONVERGE_CLUSTER_KEY") {
			t.Fatalf("loadKey under a file: %v; want an error naming --state-dir and CONVERGE_CLUSTER_KEY", err)
		}
	})
}

func TestDefaultStateDir(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/var/lib/someone")
	if got, err := DefaultStateDir(); err != nil || got != filepath.Join("/var/lib/someone", "converge") {
		t.Errorf("with XDG_STATE_HOME: %q, %v", got, err)
	}
	t.Setenv("XDG_STATE_HOME", "relative/ignored")
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory")
	}
	if got, err := DefaultStateDir(); err != nil || got != filepath.Join(home, ".local", "state", "converge") {
		t.Errorf("with a relative XDG_STATE_HOME: %q, %v; want under %s", got, err, home)
	}
}
