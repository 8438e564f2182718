package registry

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// The server key signs agents' registration tokens (see Tokens). Every
// replica of one service shares it (the server's Config.ClusterKey); a
// single server keeps its own in its state directory, so that it still
// knows its agents after a restart.
const (
	// MinKeyBytes is the shortest key accepted, and the length of a key made here.
	MinKeyBytes = 32
	// keyFile is the server's own key in its state directory: hex, one line.
	keyFile = "server.key"
)

// ParseKey decodes a key: at least MinKeyBytes bytes written as hex, or
// as base64 (standard or URL alphabet, padded or not). A string of hex
// digits is read as hex. Surrounding white space is ignored.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	const how = "make one with `openssl rand -hex 32`"
	if s == "" {
		return nil, fmt.Errorf("key is empty; %s", how)
	}
	key, err := hex.DecodeString(s)
	if err != nil {
		key, err = decodeBase64(s)
	}
	if err != nil {
		return nil, fmt.Errorf("key is neither hex nor base64; %s", how)
	}
	if len(key) < MinKeyBytes {
		return nil, fmt.Errorf("key is %d bytes long, at least %d are needed; %s", len(key), MinKeyBytes, how)
	}
	return key, nil
}

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// WeakKey reports whether key is trivially guessable: all one byte
// (all zeros), or few distinct bytes (a short pattern repeated). A key
// from `openssl rand` has about 28 distinct bytes in 32; fewer than 12
// happens by chance less than once in 10^12.
func WeakKey(key []byte) bool {
	var seen [256]bool
	n := 0
	for _, b := range key {
		if !seen[b] {
			seen[b] = true
			n++
		}
	}
	return n < 12
}

// KeyID names a key in logs without revealing it, so operators can check
// that replicas share one.
func KeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:4])
}

// DefaultStateDir is where the converge command keeps its state unless
// told otherwise: $XDG_STATE_HOME/converge, else ~/.local/state/converge.
func DefaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "converge"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no directory to keep the server key in (%w): set --state-dir (CONVERGE_STATE_DIR), or CONVERGE_CLUSTER_KEY", err)
	}
	return filepath.Join(home, ".local", "state", "converge"), nil
}

// LoadKey returns the key kept in dir, making dir (mode 0700) and the key
// (mode 0600) the first time. created reports whether it made the key.
func LoadKey(dir string) (key []byte, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("cannot create the state directory to keep the server key in: %w; make it writable, choose another with --state-dir (CONVERGE_STATE_DIR), or set CONVERGE_CLUSTER_KEY", err)
	}
	path := filepath.Join(dir, keyFile)
	key, err = readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	if err := createKey(path); err != nil {
		return nil, false, err
	}
	key, err = readKey(path)
	return key, err == nil, err
}

// WritableByOthers reports whether users other than its owner may
// create or replace files in dir (group or world writable, on Unix):
// such a user could put a key of their own where the server looks for
// its own.
func WritableByOthers(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0
}

// readKey reads the key file at path, refusing one others may read.
func readKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("server key %s may be read by others (mode %v): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read server key: %w", err)
	}
	key, err := ParseKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("server key %s: %w (or delete it to make a new one; agents connected now then register as new)", path, err)
	}
	return key, nil
}

// createKey writes a fresh key to path unless a file is there already
// (another server made it first): written whole to a temporary file, then
// linked into place, so no reader ever sees a part of it.
func createKey(path string) error {
	var key [MinKeyBytes]byte
	rand.Read(key[:])
	tmp, err := os.CreateTemp(filepath.Dir(path), ".server.key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("create server key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(key[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write server key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create server key: %w", err)
	}
	return nil
}
