package lifetime

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestExtend: converge extend moves the deadline by holding, never past
// --max-session, and refuses nonsense.
func TestExtend(t *testing.T) {
	l := New(Config{Expiry: time.Minute, MaxSession: time.Hour}, t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	now := time.Now()
	l.st.start, l.st.firstLogin, l.st.active = now, now, now
	d, capped, err := l.Extend(10 * time.Minute)
	if err != nil || capped || d.Before(now.Add(10*time.Minute)) {
		t.Fatalf("Extend(10m) = %v, %v, %v; want a deadline 10m on, not capped", d.Sub(now), capped, err)
	}
	if got := l.Describe(); !strings.Contains(got, "Held (converge extend, or .hold) until") {
		t.Errorf("Describe after Extend lacks the hold:\n%s", got)
	}
	if d, capped, _ = l.Extend(5 * time.Hour); !capped || d.After(now.Add(time.Hour)) {
		t.Errorf("Extend(5h) = %v, capped %v; want the 1h cap", d.Sub(now), capped)
	}
	if _, _, err := l.Extend(0); err == nil {
		t.Error("Extend(0) succeeded, want an error")
	}
}

// TestDescribe: converge status says what bounds the agent.
func TestDescribe(t *testing.T) {
	std := Config{ConnectTimeout: 10 * time.Minute, Expiry: 30 * time.Minute, ExitOnLastLogout: true}
	for _, tt := range []struct {
		name string
		st   lifeState
		want []string
	}{
		{"before a login", lifeState{cfg: std}, []string{"Deadline: 03:10:00 UTC, in 10m0s, unless someone logs in.", "At the last logout"}},
		{"logged in", lifeState{cfg: std, firstLogin: t0, active: t0, users: 1}, []string{"03:30:00 UTC", "idle expiry 30m0s", "Logged in: 1."}},
		{"busy", lifeState{cfg: std, busy: 1, firstLogin: t0, users: 1}, []string{"A step is running"}},
		{"passed", lifeState{cfg: std, unused: true, firstLogin: t0, users: 1}, []string{"exits once nobody is connected"}},
		{"no deadline", lifeState{firstLogin: t0, users: 1}, []string{"No deadline"}},
	} {
		tt.st.start = t0
		got := describe(&tt.st, t0, "linux")
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: describe lacks %q:\n%s", tt.name, w, got)
			}
		}
	}
}
