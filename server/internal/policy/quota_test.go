package policy

import (
	"context"
	"errors"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestQuota(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	for name, mk := range map[string]func() (*Quota, *Quota){
		"memory": func() (*Quota, *Quota) { q := NewQuota(2, nil); return q, q },
		"redis":  func() (*Quota, *Quota) { return NewQuota(2, rdb), NewQuota(2, rdb) }, // two replicas
	} {
		t.Run(name, func(t *testing.T) {
			a, b := mk()
			ctx := context.Background()
			r1, err := a.Acquire(ctx, "github.com/acme/app", "one")
			if err != nil {
				t.Fatal(err)
			}
			// The same agent reconnecting overlaps itself: counted once.
			r1b, err := b.Acquire(ctx, "github.com/acme/app", "one")
			if err != nil {
				t.Fatalf("the same ID again: %v", err)
			}
			r2, err := b.Acquire(ctx, "github.com/acme/app", "two")
			if err != nil {
				t.Fatal(err)
			}
			var full *QuotaError
			if _, err := a.Acquire(ctx, "github.com/acme/app", "three"); !errors.As(err, &full) || full.Max != 2 {
				t.Fatalf("third agent: %v, want a QuotaError", err)
			}
			if _, err := a.Acquire(ctx, "github.com/acme/other", "three"); err != nil {
				t.Fatalf("another repository: %v", err)
			}
			if _, err := a.Acquire(ctx, "", "x"); err != nil {
				t.Fatalf("no repository: %v", err)
			}
			if err := a.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			r2()
			r2() // twice is once
			if _, err := a.Acquire(ctx, "github.com/acme/app", "three"); err != nil {
				t.Fatalf("after a release: %v", err)
			}
			r1()
			r1b()
		})
	}
}
