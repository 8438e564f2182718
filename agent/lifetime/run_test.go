package lifetime

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"
)

// The tests below run the lifetime's loop in a synctest bubble: time is
// fake, and advances only when every goroutine in the bubble waits.

func newTestLifetime(t *testing.T, cfg Config, state bool) (*Lifetime, string) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	var sf *StateFile
	if state {
		sf = NewStateFile(dir, "test-id", "ws://test", log)
	}
	return New(cfg, dir, log, sf), dir
}

// ended reports whether the lifetime has ended the connection loop.
func ended(ctx context.Context) bool {
	synctest.Wait()
	return ctx.Err() != nil
}

func TestLifetimeRunNoLogin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{ConnectTimeout: 10 * time.Minute, Expiry: time.Minute, NoLoginStatus: 3}
		l, _ := newTestLifetime(t, cfg, false)
		start := time.Now()
		ctx, r := l.Start(context.Background())
		<-ctx.Done()
		err := r.End(nil)
		if !errors.Is(err, ErrNoLogin) || cfg.ExitStatus(err) != 3 {
			t.Errorf("Run would return %v (exit %d), want ErrNoLogin (exit 3)", err, cfg.ExitStatus(err))
		}
		if got := time.Since(start); got != 10*time.Minute {
			t.Errorf("ended after %v, want the connect timeout, 10m", got)
		}
		r.Exit(err)
	})
}

func TestLifetimeRunInputExtendsAndLastLogoutEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Config{ConnectTimeout: time.Minute, Expiry: 10 * time.Minute, ExitOnLastLogout: true}, false)
		ctx, r := l.Start(context.Background())
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
			r.End(nil)
			t.Fatalf("ended (%v) although the user typed within every expiry window", r.reason)
		}
		logout()
		if !ended(ctx) {
			t.Fatal("still running after the last logout")
		}
		if err := r.End(nil); err != nil || r.reason != endLastLogout {
			t.Errorf("end: err %v, reason %v; want nil, last logout", err, r.reason)
		}
		r.Exit(nil)
	})
}

func TestLifetimeRunExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Config{Expiry: 10 * time.Minute, ExitOnLastLogout: true}, false)
		ctx, r := l.Start(context.Background())
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
		if err := r.End(nil); err != nil || r.reason != endExpired {
			t.Errorf("end: err %v, reason %v; want nil, expired", err, r.reason)
		}
		r.Exit(nil)
	})
}

func TestLifetimeRunHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Config{Expiry: 10 * time.Minute, ExitOnLastLogout: true}, false)
		hold := filepath.Join(dir, HoldFile)
		ctx, r := l.Start(context.Background())
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
		r.End(nil)
		r.Exit(nil)
	})
}

func TestLifetimeRunMaxSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Config{Expiry: 10 * time.Minute, MaxSession: time.Hour, ExitOnLastLogout: true}, false)
		hold := filepath.Join(dir, HoldFile)
		if err := os.WriteFile(hold, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		far := time.Now().Add(24 * time.Hour)
		os.Chtimes(hold, far, far)
		ctx, r := l.Start(context.Background())
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
		if r.End(nil); r.reason != endMaxSession {
			t.Errorf("reason %v, want max session", r.reason)
		}
		r.Exit(nil)
	})
}

func TestLifetimeRunWaitRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Config{ConnectTimeout: time.Hour, Expiry: 10 * time.Minute, ExitOnLastLogout: true}, true)
		ctx, r := l.Start(context.Background())
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
		r.End(nil)
		r.Exit(nil)
		st, err = readState(dir)
		if err != nil || !st.Exited || st.ExitStatus != 0 || st.Reason != endLastLogout.reason() {
			t.Errorf("final state %+v, %v: want exited 0 after the last logout", st, err)
		}
	})
}

func TestLifetimeRunWaitRequestUnused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, dir := newTestLifetime(t, Config{ConnectTimeout: time.Hour}, true)
		// A request left by an earlier run in the same directory is
		// dropped at the start.
		os.MkdirAll(filepath.Join(dir, StateDir), 0o755)
		os.WriteFile(filepath.Join(dir, StateDir, waitRequestName), nil, 0o644)
		ctx, r := l.Start(context.Background())
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
		err := r.End(nil)
		if err != nil || r.reason != endUnused {
			t.Errorf("end: %v, %v; want nil, unused", err, r.reason)
		}
		r.Exit(err)
	})
}
