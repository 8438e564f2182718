// Package testlog gives tests a slog.Logger that writes to the test's own
// log, so what the servers under test log shows only when a test fails.
// It is for tests only.
package testlog

import (
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// New returns a debug-level text logger writing to t.Log. Lines logged
// after the test has ended (by a goroutine still stopping) are dropped
// rather than panicking: call New before starting what logs, so its
// cleanup runs after theirs.
func New(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(Writer(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Writer returns an io.Writer that logs each write with t.Log (for a
// child process's stderr, say), with the same care for late writes.
func Writer(t testing.TB) io.Writer {
	w := &writer{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

type writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
