package policy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// tokenSet is the shared tokens: those given directly, and those of a
// file, re-read when its modification time or size changes. It keeps
// only their SHA-256 sums, so every comparison is of 32 bytes.
type tokenSet struct {
	log   *slog.Logger
	fixed [][sha256.Size]byte
	file  string

	mu       sync.Mutex
	fromFile [][sha256.Size]byte
	stamp    fileStamp // of the file as last read
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func newTokenSet(tokens []string, file string, log *slog.Logger) (*tokenSet, error) {
	ts := &tokenSet{log: log, file: file}
	for i, t := range tokens {
		if err := validToken(t); err != nil {
			return nil, fmt.Errorf("agent token %d (CONVERGE_AGENT_TOKENS): %w", i+1, err)
		}
		ts.fixed = append(ts.fixed, sha256.Sum256([]byte(t)))
	}
	if file != "" {
		st, sums, err := readTokenFile(file)
		if err != nil {
			return nil, err
		}
		if len(sums) == 0 && len(ts.fixed) == 0 {
			return nil, fmt.Errorf("agent token file %s holds no token: every agent would be refused", file)
		}
		ts.stamp, ts.fromFile = st, sums
	}
	return ts, nil
}

// validToken checks a shared token's form (never its value in a message).
func validToken(t string) error {
	if len(t) < MinTokenLength {
		return fmt.Errorf("too short: at least %d characters (make one with `openssl rand -hex 32`)", MinTokenLength)
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] > '~' {
			return fmt.Errorf("character %d is not printable ASCII without spaces", i+1)
		}
	}
	return nil
}

// readTokenFile reads a token file; errors name lines, never tokens.
func readTokenFile(name string) (fileStamp, [][sha256.Size]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return fileStamp{}, nil, fmt.Errorf("agent token file: %w", err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		return fileStamp{}, nil, fmt.Errorf("agent token file: %w", err)
	}
	var sums [][sha256.Size]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := validToken(line); err != nil {
			return fileStamp{}, nil, fmt.Errorf("agent token file %s, line %d: %w", name, n, err)
		}
		sums = append(sums, sha256.Sum256([]byte(line)))
	}
	if err := sc.Err(); err != nil {
		return fileStamp{}, nil, fmt.Errorf("agent token file %s: %w", name, err)
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, sums, nil
}

// match reports whether t is one of the tokens, comparing its sum with
// every token's in constant time (no early exit), so that timing tells
// nothing about which prefix was right.
func (ts *tokenSet) match(t string) bool {
	sum := sha256.Sum256([]byte(t))
	found := 0
	for _, s := range ts.fixed {
		found |= subtle.ConstantTimeCompare(sum[:], s[:])
	}
	for _, s := range ts.current() {
		found |= subtle.ConstantTimeCompare(sum[:], s[:])
	}
	return found == 1
}

// current returns the file's tokens, re-reading it if it changed.
func (ts *tokenSet) current() [][sha256.Size]byte {
	if ts.file == "" {
		return nil
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	fi, err := os.Stat(ts.file)
	if err != nil {
		ts.log.Debug("agent token file unreadable; keeping the tokens last read", "file", ts.file, "error", err)
		return ts.fromFile
	}
	if (fileStamp{mod: fi.ModTime(), size: fi.Size()}) == ts.stamp {
		return ts.fromFile
	}
	st, sums, err := readTokenFile(ts.file)
	if err != nil { // said once per change of the file
		ts.stamp = fileStamp{mod: fi.ModTime(), size: fi.Size()}
		ts.log.Warn("agent token file unreadable; keeping the tokens last read", "file", ts.file, "error", err)
		return ts.fromFile
	}
	ts.stamp, ts.fromFile = st, sums
	ts.log.Info("agent token file re-read", "file", ts.file, "tokens", len(sums))
	return sums
}
