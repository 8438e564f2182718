package lifetime

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

func TestLifetimeReportsStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newTestLifetime(t, Config{ConnectTimeout: 10 * time.Minute, Expiry: 30 * time.Minute}, false)
		start := time.Now()
		ctx, r := l.Start(context.Background())
		got := make(chan wire.Status, 100)
		stop := l.Report(ctx, func(_ context.Context, st wire.Status) error { got <- st; return nil })
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
		r.End(nil)
		r.Exit(nil)
	})
}
