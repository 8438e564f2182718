package cli

import (
	"bytes"
	"log/slog"
	"runtime"
	"strings"
	"testing"
)

func TestRaiseFileLimit(t *testing.T) {
	limit, err := RaiseFileLimit()
	if runtime.GOOS == "windows" {
		if limit != 0 || err != nil {
			t.Errorf("RaiseFileLimit() = %d, %v on windows; want 0, nil", limit, err)
		}
		return
	}
	if err != nil && runtime.GOOS != "darwin" {
		t.Fatalf("RaiseFileLimit: %v", err)
	}
	if limit == 0 {
		t.Fatalf("RaiseFileLimit() = 0; want the soft limit")
	}
	again, _ := RaiseFileLimit()
	if again != limit {
		t.Errorf("second RaiseFileLimit() = %d, first %d; want the same (raising is idempotent)", again, limit)
	}
}

func TestCheckFileLimitWarns(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no file descriptor limit on windows")
	}
	for _, tc := range []struct {
		need int
		want string
	}{
		{1, "level=INFO msg=\"file descriptor limit\""},
		{0, "level=INFO msg=\"file descriptor limit\""},
		{1 << 40, "level=WARN msg=\"the file descriptor limit is below"},
	} {
		var buf bytes.Buffer
		CheckFileLimit(slog.New(slog.NewTextHandler(&buf, nil)), tc.need)
		if !strings.Contains(buf.String(), tc.want) || !strings.Contains(buf.String(), "limit=") {
			t.Errorf("CheckFileLimit(need %d) logged %q; want %q with the limit", tc.need, buf.String(), tc.want)
		}
	}
}
