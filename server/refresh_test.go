package server

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/converge-ci/converge/server/internal/registry"
)

// TestRefreshRetriesWithinTheLease: while Redis does not answer (a
// failover), the lease refresh is tried every second, not at the next
// LeaseRefresh, so that a master back within the lease finds its leases
// renewed at once; once it answers, the pace is LeaseRefresh again.
func TestRefreshRetriesWithinTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var calls []time.Duration
		c := &cluster{log: slog.New(slog.DiscardHandler), kick: make(chan struct{}, 1), published: map[string]string{}}
		c.refresh = func() (int64, bool, error) {
			calls = append(calls, time.Since(start))
			if time.Since(start) < 9*time.Second { // no master from before the first refresh until 9 s
				return 0, false, registry.ErrUnavailable
			}
			return 1, false, nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); c.refreshLoop(ctx, make(chan struct{})) }()
		time.Sleep(25*time.Second + time.Millisecond)
		cancel()
		<-done
		var want []time.Duration
		for _, s := range []int{5, 6, 7, 8, 9, 14, 19, 24} {
			want = append(want, time.Duration(s)*time.Second)
		}
		if !slices.Equal(calls, want) {
			t.Errorf("refreshes at %v, want %v (every second while failing, then every %v)", calls, want, registry.LeaseRefresh)
		}
	})
}
