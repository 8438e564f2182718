package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

var t0 = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// TestLifeStateEnd asks the state machine, at given instants, for the
// deadline and whether the agent must end.
func TestLifeStateEnd(t *testing.T) {
	std := Lifetime{ConnectTimeout: 10 * time.Minute, Expiry: 30 * time.Minute, WarnBefore: 5 * time.Minute, ExitOnLastLogout: true}
	stay := std
	stay.ExitOnLastLogout = false
	capped := std
	capped.MaxSession = time.Hour
	in := func(s lifeState) lifeState { // one user logged in at 1m, last input at 5m
		s.firstLogin, s.users, s.logins, s.active = at(time.Minute), 1, 1, at(5*time.Minute)
		return s
	}
	typed := func(s lifeState, when time.Time) lifeState { s.active = when; return s }
	out := func(s lifeState) lifeState { // ... who logged out at 5m
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
		{"no connect timeout waits forever", lifeState{cfg: Lifetime{}}, at(1000 * time.Hour), time.Time{}, endNone},
		{"hold before the first login", lifeState{cfg: std, hold: at(20 * time.Minute)}, at(40 * time.Minute), at(50 * time.Minute), endNone},
		{"hold before the first login ran out", lifeState{cfg: std, hold: at(20 * time.Minute)}, at(50 * time.Minute), at(50 * time.Minute), endNoLogin},
		{"old hold changes nothing", lifeState{cfg: std, hold: at(-time.Hour)}, at(10 * time.Minute), at(10 * time.Minute), endNoLogin},
		{"logged in, within expiry", in(lifeState{cfg: std}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"logged in, no input for expiry", in(lifeState{cfg: std}), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"connect timeout no longer applies", in(lifeState{cfg: std}), at(20 * time.Minute), at(35 * time.Minute), endNone},
		{"future hold extends", in(lifeState{cfg: std, hold: at(2 * time.Hour)}), at(2 * time.Hour), at(150 * time.Minute), endNone},
		{"hold runs out", in(lifeState{cfg: std, hold: at(2 * time.Hour)}), at(150 * time.Minute), at(150 * time.Minute), endExpired},
		{"older hold than input changes nothing", in(lifeState{cfg: std, hold: at(2 * time.Minute)}), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"no expiry while logged in", in(lifeState{cfg: Lifetime{ConnectTimeout: time.Minute}}), at(1000 * time.Hour), time.Time{}, endNone},
		{"max session caps the expiry", in(lifeState{cfg: capped}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"max session caps a hold", in(lifeState{cfg: capped, hold: at(5 * time.Hour)}), at(60 * time.Minute), at(61 * time.Minute), endNone},
		{"max session reached despite hold", in(lifeState{cfg: capped, hold: at(5 * time.Hour)}), at(61 * time.Minute), at(61 * time.Minute), endMaxSession},
		{"max session reached despite input", typed(in(lifeState{cfg: capped}), at(60*time.Minute)), at(61 * time.Minute), at(61 * time.Minute), endMaxSession},
		{"last logout ends", out(lifeState{cfg: std}), at(5 * time.Minute), at(35 * time.Minute), endLastLogout},
		{"last logout while held", out(lifeState{cfg: std, hold: at(6 * time.Minute)}), at(20 * time.Minute), at(36 * time.Minute), endNone},
		{"last logout once the hold ran out", out(lifeState{cfg: std, hold: at(-40 * time.Minute)}), at(5 * time.Minute), at(35 * time.Minute), endLastLogout},
		{"last logout with stay", out(lifeState{cfg: stay}), at(34 * time.Minute), at(35 * time.Minute), endNone},
		{"stay ends at the expiry", out(lifeState{cfg: stay}), at(35 * time.Minute), at(35 * time.Minute), endExpired},
		{"wait: unused, nobody came", lifeState{cfg: std, jobDone: true}, at(time.Minute), at(10 * time.Minute), endUnused},
		{"wait: held", lifeState{cfg: std, jobDone: true, hold: at(0)}, at(time.Minute), at(30 * time.Minute), endNone},
		{"wait: a user is in", in(lifeState{cfg: std, jobDone: true}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"wait: stay keeps a session that was used", out(lifeState{cfg: stay, jobDone: true}), at(6 * time.Minute), at(35 * time.Minute), endNone},
		{"wait: stay, nobody came", lifeState{cfg: stay, jobDone: true}, at(6 * time.Minute), at(10 * time.Minute), endUnused},
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
	s := lifeState{cfg: Lifetime{Expiry: 10 * time.Minute, WarnBefore: 2 * time.Minute}, start: t0, firstLogin: t0, users: 1, active: t0}
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
		if got := (Lifetime{Expiry: tt.expiry, WarnBefore: tt.warn}).warnBefore(); got != tt.want {
			t.Errorf("expiry %v, warn-before %v: effective %v, want %v", tt.expiry, tt.warn, got, tt.want)
		}
	}
}

func TestLifetimeValidate(t *testing.T) {
	if err := (Lifetime{Expiry: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "expiry") {
		t.Errorf("negative expiry: err = %v, want one naming the expiry", err)
	}
	if err := (Lifetime{}).Validate(); err != nil {
		t.Errorf("zero lifetime: %v", err)
	}
}

func TestExitStatus(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{ErrNoLogin, 3},
		{errors.Join(errors.New("x"), ErrNoLogin), 3},
		{errors.New("server refused agent"), 1},
	} {
		if got := ExitStatus(tt.err); got != tt.want {
			t.Errorf("ExitStatus(%v) = %d, want %d", tt.err, got, tt.want)
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

// The tests below run the lifetime's loop in a synctest bubble: time is
// fake, and advances only when every goroutine in the bubble waits.

func newTestLifetime(t *testing.T, cfg Lifetime, state bool) (*lifetime, string) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	var sf *stateFile
	if state {
		sf = newStateFile(dir, "test-id", "ws://test", log)
	}
	return newLifetime(cfg, dir, log, sf), dir
}

// ended reports whether the lifetime has ended the connection loop.
func ended(ctx context.Context) bool {
	synctest.Wait()
	return ctx.Err() != nil
}

func TestLifetimeRunNoLogin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Lifetime{ConnectTimeout: 10 * time.Minute, Expiry: time.Minute}, false)
		start := time.Now()
		ctx, r := l.start(context.Background())
		<-ctx.Done()
		err := r.end(nil)
		if !errors.Is(err, ErrNoLogin) || ExitStatus(err) != ExitNoLogin {
			t.Errorf("Run would return %v (exit %d), want ErrNoLogin (exit 3)", err, ExitStatus(err))
		}
		if got := time.Since(start); got != 10*time.Minute {
			t.Errorf("ended after %v, want the connect timeout, 10m", got)
		}
		r.exit(err)
	})
}

func TestLifetimeRunInputExtendsAndLastLogoutEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Lifetime{ConnectTimeout: time.Minute, Expiry: 10 * time.Minute, ExitOnLastLogout: true}, false)
		ctx, r := l.start(context.Background())
		time.Sleep(30 * time.Second)
		conn, logout := context.WithCancel(context.Background())
		l.login(conn)
		time.Sleep(time.Minute) // past the connect timeout: logged in in time
		if ended(ctx) {
			t.Fatal("ended at the connect timeout although a user logged in")
		}
		l.activity()
		for range 5 { // 5 × 9m of sessions with input: well past the expiry
			time.Sleep(9 * time.Minute)
			l.activity()
		}
		if ended(ctx) {
			r.end(nil)
			t.Fatalf("ended (%v) although the user typed within every expiry window", r.reason)
		}
		logout()
		if !ended(ctx) {
			t.Fatal("still running after the last logout")
		}
		if err := r.end(nil); err != nil || r.reason != endLastLogout {
			t.Errorf("end: err %v, reason %v; want nil, last logout", err, r.reason)
		}
		r.exit(nil)
	})
}

func TestLifetimeRunExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Lifetime{Expiry: 10 * time.Minute, ExitOnLastLogout: true}, false)
		ctx, r := l.start(context.Background())
		conn, logout := context.WithCancel(context.Background())
		defer logout()
		l.login(conn)
		time.Sleep(7 * time.Minute)
		l.activity()
		loggedIn := time.Now()
		time.Sleep(10*time.Minute - time.Nanosecond)
		if ended(ctx) {
			t.Fatal("expired before 10m without input")
		}
		<-ctx.Done()
		if got := time.Since(loggedIn); got != 10*time.Minute {
			t.Errorf("expired %v after the last input, want 10m", got)
		}
		if err := r.end(nil); err != nil || r.reason != endExpired {
			t.Errorf("end: err %v, reason %v; want nil, expired", err, r.reason)
		}
		r.exit(nil)
	})
}

func TestLifetimeRunHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Lifetime{Expiry: 10 * time.Minute, ExitOnLastLogout: true}, false)
		hold := filepath.Join(dir, HoldFile)
		ctx, r := l.start(context.Background())
		conn, logout := context.WithCancel(context.Background())
		l.login(conn)
		time.Sleep(5 * time.Minute)
		// touch -d '+1 hour' .hold
		if err := os.WriteFile(hold, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		until := time.Now().Add(time.Hour)
		if err := os.Chtimes(hold, until, until); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the agent looks at .hold every second
		logout()
		time.Sleep(time.Hour)
		if ended(ctx) {
			t.Fatal("ended while .hold held it")
		}
		// A later touch extends again.
		now := time.Now()
		if err := os.Chtimes(hold, now, now); err != nil {
			t.Fatal(err)
		}
		<-ctx.Done()
		if got := time.Since(now); got < 10*time.Minute || got > 10*time.Minute+holdPoll {
			t.Errorf("ended %v after the last touch of .hold, want 10m (.hold's mtime + expiry)", got)
		}
		r.end(nil)
		r.exit(nil)
	})
}

func TestLifetimeRunMaxSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Lifetime{Expiry: 10 * time.Minute, MaxSession: time.Hour, ExitOnLastLogout: true}, false)
		hold := filepath.Join(dir, HoldFile)
		if err := os.WriteFile(hold, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		far := time.Now().Add(24 * time.Hour)
		os.Chtimes(hold, far, far)
		ctx, r := l.start(context.Background())
		time.Sleep(3 * time.Minute)
		conn, logout := context.WithCancel(context.Background())
		defer logout()
		l.login(conn)
		first := time.Now()
		for !ended(ctx) {
			time.Sleep(time.Minute)
			l.activity()
		}
		if got := time.Since(first); got != time.Hour {
			t.Errorf("ended %v after the first login, want the 1h cap", got)
		}
		if r.end(nil); r.reason != endMaxSession {
			t.Errorf("reason %v, want max session", r.reason)
		}
		r.exit(nil)
	})
}

func TestLifetimeRunWaitRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Lifetime{ConnectTimeout: time.Hour, Expiry: 10 * time.Minute, ExitOnLastLogout: true}, true)
		ctx, r := l.start(context.Background())
		conn, logout := context.WithCancel(context.Background())
		l.login(conn)
		time.Sleep(time.Minute)
		if err := os.WriteFile(filepath.Join(dir, StateDir, waitRequestName), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if ended(ctx) {
			t.Fatal("`agent wait` ended the agent while a user was logged in")
		}
		st, err := readState(dir)
		if err != nil || !st.Waiting || st.Sessions != 1 {
			t.Fatalf("state %+v, %v: want waiting with 1 session", st, err)
		}
		logout()
		<-ctx.Done()
		r.end(nil)
		r.exit(nil)
		st, err = readState(dir)
		if err != nil || !st.Exited || st.ExitStatus != 0 || st.Reason != endLastLogout.reason() {
			t.Errorf("final state %+v, %v: want exited 0 after the last logout", st, err)
		}
	})
}

func TestLifetimeRunWaitRequestUnused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Lifetime{ConnectTimeout: time.Hour}, true)
		// A request left by an earlier run in the same directory is
		// dropped at the start.
		os.MkdirAll(filepath.Join(dir, StateDir), 0o755)
		os.WriteFile(filepath.Join(dir, StateDir, waitRequestName), nil, 0o644)
		ctx, r := l.start(context.Background())
		time.Sleep(5 * time.Second)
		if ended(ctx) {
			t.Fatal("an old wait request ended a new agent")
		}
		os.WriteFile(filepath.Join(dir, StateDir, waitRequestName), nil, 0o644)
		asked := time.Now()
		<-ctx.Done()
		if got := time.Since(asked); got > holdPoll {
			t.Errorf("ended %v after the wait request, want within %v", got, holdPoll)
		}
		err := r.end(nil)
		if err != nil || r.reason != endUnused {
			t.Errorf("end: %v, %v; want nil, unused", err, r.reason)
		}
		r.exit(err)
	})
}

func TestLifetimeReportsStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Lifetime{ConnectTimeout: 10 * time.Minute, Expiry: 30 * time.Minute}, false)
		start := time.Now()
		ctx, r := l.start(context.Background())
		got := make(chan wire.Status, 100)
		stop := l.report(ctx, func(_ context.Context, st wire.Status) error { got <- st; return nil })
		next := func(want wire.Status) {
			t.Helper()
			synctest.Wait()
			var last wire.Status
			for n := len(got); n > 0; n-- {
				last = <-got
			}
			if !last.Expiry.Equal(want.Expiry) || last.Sessions != want.Sessions {
				t.Errorf("last status sent: %+v, want %+v", last, want)
			}
		}
		next(wire.Status{Expiry: start.Add(10 * time.Minute), Sessions: 0})
		time.Sleep(time.Minute)
		conn, logout := context.WithCancel(context.Background())
		l.login(conn)
		next(wire.Status{Expiry: start.Add(31 * time.Minute), Sessions: 1})
		time.Sleep(time.Minute)
		l.activity()
		time.Sleep(time.Second)
		next(wire.Status{Expiry: start.Add(32 * time.Minute), Sessions: 1})
		// Input moving the expiry by less than statusGrain is not worth
		// a message.
		time.Sleep(5 * time.Second)
		l.activity()
		time.Sleep(time.Second)
		synctest.Wait()
		if n := len(got); n > 0 {
			t.Errorf("%d status messages for a 5s move of the expiry, want none", n)
		}
		logout() // a logout counts as activity (for --stay)
		next(wire.Status{Expiry: start.Add(32*time.Minute + 7*time.Second), Sessions: 0})
		stop()
		r.end(nil)
		r.exit(nil)
	})
}

func TestBannerAndWarningText(t *testing.T) {
	s := lifeState{cfg: Lifetime{Expiry: 30 * time.Minute, WarnBefore: 5 * time.Minute, MaxSession: 2 * time.Hour, ExitOnLastLogout: true},
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
