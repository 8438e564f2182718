package lifetime

import (
	"strings"
	"testing"
	"time"
)

func TestBannerAndWarningText(t *testing.T) {
	s := lifeState{cfg: Config{Expiry: 30 * time.Minute, WarnBefore: 5 * time.Minute, MaxSession: 2 * time.Hour, ExitOnLastLogout: true},
		start: t0, firstLogin: t0, users: 1, active: t0}
	b := banner(&s, t0, "linux")
	for _, want := range []string{"30m0s after your last input", "03:30:00 UTC", `touch "$agentdir/.hold"`, "last user logs out", "05:00:00 UTC", "--max-session 2h0m0s"} {
		if !strings.Contains(b, want) {
			t.Errorf("banner lacks %q:\n%s", want, b)
		}
	}
	if w := banner(&s, t0, "windows"); !strings.Contains(w, `New-Item -Force "$env:agentdir\.hold"`) || strings.Contains(w, "touch") {
		t.Errorf("Windows banner should show PowerShell commands, not touch:\n%s", w)
	}
	w := warning(&s, at(25*time.Minute), 5*time.Minute, "linux")
	if !strings.Contains(w, "expires in 5m0s (at 03:30:00 UTC)") || !strings.Contains(w, `touch "$agentdir/.hold"`) {
		t.Errorf("warning lacks the time left or how to extend:\n%s", w)
	}
	s.active = at(100 * time.Minute) // the cap is now the deadline
	if w := warning(&s, at(115*time.Minute), 5*time.Minute, "linux"); !strings.Contains(w, "--max-session") {
		t.Errorf("warning before the hard cap should name it:\n%s", w)
	}
}
