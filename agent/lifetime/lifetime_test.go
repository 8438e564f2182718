package lifetime

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// TestLifeStateEnd asks the state machine, at given instants, for the
// deadline and whether the agent must end.
func TestLifeStateEnd(t *testing.T) {
	std := Config{ConnectTimeout: 10 * time.Minute, Expiry: 30 * time.Minute, WarnBefore: 5 * time.Minute, ExitOnLastLogout: true}
	stay := std
	stay.ExitOnLastLogout = false
	capped := std
	capped.MaxSession = time.Hour
	detached := std
	detached.ConnectAfterFailure = true
	in := func(s lifeState) lifeState { // one user logged in at 1m, last input at 5m
		s.firstLogin, s.users, s.logins, s.active = at(time.Minute), 1, 1, at(5*time.Minute)
		return s
	}
	typed := func(s lifeState, when time.Time) lifeState { s.active = when; return s }
	kept := func(s lifeState) lifeState { s.kept = 1; return s } // a shell left running
	out := func(s lifeState) lifeState {                         // ... who logged out at 5m
		s = in(s)
		s.users = 0
		return s
	}
	tests := []struct {
		name     string
		st       lifeState
		now      time.Time
		deadline time.Time
		want     endKind
	}{
		{"waiting for the first login", lifeState{cfg: std}, at(9 * time.Minute), at(10 * time.Minute), endNone},
		{"nobody logged in", lifeState{cfg: std}, at(10 * time.Minute), at(10 * time.Minute), endNoLogin},
		{"no connect timeout waits forever", lifeState{cfg: Config{}}, at(1000 * time.Hour), time.Time{}, endNone},
		{"hold before the first login", lifeState{cfg: std, hold: at(20 * time.Minute)}, at(40 * time.Minute), at(50 * time.Minute), endNone},
		{"hold before the first login ran out", lifeState{cfg: std, hold: at(20 * time.Minute)}, at(50 * time.Minute), at(50 * time.Minute), endNoLogin},
		{"old hold changes nothing", lifeState{cfg: std, hold: at(-time.Hour)}, at(10 * time.Minute), at(10 * time.Minute), endNoLogin},
		{"logged in, within expiry", in(lifeState{cfg: std}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"logged in, no input for expiry", in(lifeState{cfg: std}), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"connect timeout no longer applies", in(lifeState{cfg: std}), at(20 * time.Minute), at(35 * time.Minute), endNone},
		{"future hold extends", in(lifeState{cfg: std, hold: at(2 * time.Hour)}), at(2 * time.Hour), at(150 * time.Minute), endNone},
		{"hold runs out", in(lifeState{cfg: std, hold: at(2 * time.Hour)}), at(150 * time.Minute), at(150 * time.Minute), endExpired},
		{"older hold than input changes nothing", in(lifeState{cfg: std, hold: at(2 * time.Minute)}), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"no expiry while logged in", in(lifeState{cfg: Config{ConnectTimeout: time.Minute}}), at(1000 * time.Hour), time.Time{}, endNone},
		{"max session caps the expiry", in(lifeState{cfg: capped}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"max session caps a hold", in(lifeState{cfg: capped, hold: at(5 * time.Hour)}), at(60 * time.Minute), at(61 * time.Minute), endNone},
		{"max session reached despite hold", in(lifeState{cfg: capped, hold: at(5 * time.Hour)}), at(61 * time.Minute), at(61 * time.Minute), endMaxSession},
		{"max session reached despite input", typed(in(lifeState{cfg: capped}), at(60*time.Minute)), at(61 * time.Minute), at(61 * time.Minute), endMaxSession},
		{"last logout ends", out(lifeState{cfg: std}), at(5 * time.Minute), at(35 * time.Minute), endLastLogout},
		{"last logout while held", out(lifeState{cfg: std, hold: at(6 * time.Minute)}), at(20 * time.Minute), at(36 * time.Minute), endNone},
		{"last logout once the hold ran out", out(lifeState{cfg: std, hold: at(-40 * time.Minute)}), at(5 * time.Minute), at(35 * time.Minute), endLastLogout},
		{"last logout with stay", out(lifeState{cfg: stay}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"stay ends at the expiry", out(lifeState{cfg: stay}), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"a kept shell holds past the last logout", kept(out(lifeState{cfg: std})), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"a kept shell does not hold past the expiry", kept(out(lifeState{cfg: std})), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"a kept shell does not hold past max session", kept(typed(out(lifeState{cfg: capped}), at(50*time.Minute))), at(61 * time.Minute), at(61 * time.Minute), endMaxSession},
		{"wait: a kept shell is in use", kept(out(lifeState{cfg: std, jobDone: true})), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"wait: unused, nobody came", lifeState{cfg: std, jobDone: true}, at(time.Minute), at(10 * time.Minute), endUnused},
		{"wait: held", lifeState{cfg: std, jobDone: true, hold: at(0)}, at(time.Minute), at(30 * time.Minute), endNone},
		{"wait: a user is in", in(lifeState{cfg: std, jobDone: true}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"wait: stay keeps a session that was used", out(lifeState{cfg: stay, jobDone: true}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"wait: stay, nobody came", lifeState{cfg: stay, jobDone: true}, at(6 * time.Minute), at(10 * time.Minute), endUnused},
		{"detached: no connect timeout while the job runs", lifeState{cfg: detached}, at(5 * time.Hour), at(6 * time.Hour), endNone},
		{"detached: a job that never ends", lifeState{cfg: detached}, at(6 * time.Hour), at(6 * time.Hour), endNoLogin},
		{"detached: unused at the job's end", lifeState{cfg: detached, jobDone: true}, at(14 * time.Minute), at(6 * time.Hour), endUnused},
		{"detached: the job failed late", lifeState{cfg: detached, jobDone: true, failed: at(14 * time.Minute)}, at(23 * time.Minute), at(24 * time.Minute), endNone},
		{"detached: nobody came after the failure", lifeState{cfg: detached, jobDone: true, failed: at(14 * time.Minute)}, at(24 * time.Minute), at(24 * time.Minute), endNoLogin},
		{"detached: a login after the failure", in(lifeState{cfg: detached, jobDone: true, failed: at(0)}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"failed early restarts the connect timeout", lifeState{cfg: std, jobDone: true, failed: at(4 * time.Minute)}, at(13 * time.Minute), at(14 * time.Minute), endNone},
		{"failed late keeps the connect timeout from the start", lifeState{cfg: std, jobDone: true, failed: at(-4 * time.Minute)}, at(10 * time.Minute), at(10 * time.Minute), endNoLogin},
		{"decided: ends at once", in(lifeState{cfg: std, decided: true}), at(6 * time.Minute), at(35 * time.Minute), endDecided},
		{"decided: the cap still says why", in(lifeState{cfg: capped, decided: true}), at(61 * time.Minute), at(35 * time.Minute), endMaxSession},
		{"passed: waits for the user", in(lifeState{cfg: std, unused: true}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"passed: ends when the user left", out(lifeState{cfg: stay, unused: true}), at(6 * time.Minute), at(35 * time.Minute), endDecided},
		{"passed: a kept shell does not hold", kept(out(lifeState{cfg: stay, unused: true})), at(6 * time.Minute), at(35 * time.Minute), endDecided},
		{"passed: held by extend", out(lifeState{cfg: std, unused: true, extended: at(20 * time.Minute)}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"extend holds past the expiry", out(lifeState{cfg: std, extended: at(2 * time.Hour)}), at(90 * time.Minute), at(2 * time.Hour), endNone},
		{"extend runs out", in(lifeState{cfg: std, extended: at(2 * time.Hour)}), at(2 * time.Hour), at(2 * time.Hour), endExpired},
		{"extend never passes the cap", in(lifeState{cfg: capped, extended: at(5 * time.Hour)}), at(61 * time.Minute), at(61 * time.Minute), endMaxSession},
		{"busy: no idle expiry", in(lifeState{cfg: std, busy: 1}), at(50 * time.Minute), at(35 * time.Minute), endNone},
		{"busy: no end at the last logout", out(lifeState{cfg: std, busy: 1}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"busy: the cap still ends it", in(lifeState{cfg: capped, busy: 1}), at(61 * time.Minute), at(35 * time.Minute), endMaxSession},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.st.start = t0
			if got := tt.st.deadline(); !got.Equal(tt.deadline) {
				t.Errorf("deadline = %v, want %v (state %+v)", got, tt.deadline, tt.st)
			}
			if got := tt.st.end(tt.now); got != tt.want {
				t.Errorf("end at %v = %v, want %v (state %+v)", tt.now.Sub(t0), got, tt.want, tt.st)
			}
		})
	}
}

// TestLifeStateWarnings walks a session second by second: warnings start
// WarnBefore ahead, repeat as the time left halves, and start over when
// input moves the deadline.
func TestLifeStateWarnings(t *testing.T) {
	s := lifeState{cfg: Config{Expiry: 10 * time.Minute, WarnBefore: 2 * time.Minute}, start: t0, firstLogin: t0, users: 1, active: t0}
	walk := func(from, to time.Duration) []time.Duration {
		var got []time.Duration
		for d := from; d <= to; d += time.Second {
			if left, due := s.warning(at(d)); due {
				got = append(got, left)
			}
		}
		return got
	}
	want := []time.Duration{2 * time.Minute, time.Minute, 30 * time.Second, 15 * time.Second}
	if got := walk(0, 10*time.Minute); !equalDurations(got, want) {
		t.Fatalf("warnings at time left %v, want %v", got, want)
	}
	// Input after the first warning starts them over.
	s.active, s.warned = t0, 0
	if got := walk(0, 8*time.Minute+30*time.Second); !equalDurations(got, want[:1]) {
		t.Fatalf("before input: warnings %v, want %v", got, want[:1])
	}
	s.active = at(8*time.Minute + 30*time.Second)
	if got := walk(8*time.Minute+31*time.Second, 18*time.Minute+30*time.Second); !equalDurations(got, want) {
		t.Fatalf("after input: warnings %v, want %v", got, want)
	}
	// Nobody to warn.
	s.users, s.warned = 0, 0
	if got := walk(8*time.Minute+31*time.Second, 18*time.Minute+30*time.Second); len(got) > 0 {
		t.Fatalf("warned %v with nobody logged in", got)
	}
}

func TestWarnBeforeAtMostHalfTheExpiry(t *testing.T) {
	for _, tt := range []struct{ expiry, warn, want time.Duration }{
		{30 * time.Minute, 5 * time.Minute, 5 * time.Minute},
		{4 * time.Minute, 5 * time.Minute, 2 * time.Minute},
		{0, 5 * time.Minute, 5 * time.Minute},
		{time.Minute, 0, 0},
	} {
		if got := (Config{Expiry: tt.expiry, WarnBefore: tt.warn}).warnBefore(); got != tt.want {
			t.Errorf("expiry %v, warn-before %v: effective %v, want %v", tt.expiry, tt.warn, got, tt.want)
		}
	}
}

func TestLifetimeValidate(t *testing.T) {
	if err := (Config{Expiry: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "expiry") {
		t.Errorf("negative expiry: err = %v, want one naming the expiry", err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero lifetime: %v", err)
	}
}

func TestExitStatus(t *testing.T) {
	for _, tt := range []struct {
		noLogin int
		err     error
		want    int
	}{
		{0, nil, 0},
		{0, ErrNoLogin, 0},
		{3, ErrNoLogin, 3},
		{3, errors.Join(errors.New("x"), ErrNoLogin), 3},
		{3, errors.New("server refused agent"), 1},
	} {
		if got := (Config{NoLoginStatus: tt.noLogin}).ExitStatus(tt.err); got != tt.want {
			t.Errorf("NoLoginStatus %d: ExitStatus(%v) = %d, want %d", tt.noLogin, tt.err, got, tt.want)
		}
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
