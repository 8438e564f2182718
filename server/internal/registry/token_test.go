package registry

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

func TestTokenRoundTrip(t *testing.T) {
	k := NewTokens(bytes.Repeat([]byte{7}, 32), 5*time.Minute)
	now := time.Unix(1_800_000_000, 0)
	ten := Tenure{since: 1_799_990_000, nonce: 42}
	tok := k.Sign("job-1", ten, now)
	if err := wire.ValidToken(tok); err != nil {
		t.Fatalf("token %q is no wire token: %v", tok, err)
	}
	c, err := k.Verify("job-1", tok, now.Add(time.Minute))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if want := (Claim{Tenure: ten, Proven: true, Issued: unixSeconds(now)}); c != want {
		t.Errorf("verify = %+v, want %+v", c, want)
	}
	if again := k.Sign("job-1", ten, now.Add(time.Minute)); again == tok {
		t.Errorf("a token signed later is the same token %q", tok)
	}
}

// TestTokenRejects: a token proves nothing for another ID, under another
// key, cut short, altered anywhere, out of date or from the future.
func TestTokenRejects(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	k := NewTokens(key, 5*time.Minute)
	now := time.Unix(1_800_000_000, 0)
	tok := k.Sign("job-1", Tenure{since: 1_799_999_000, nonce: 1}, now)

	flip := func(i int) string {
		b := []byte(tok)
		if b[i] == '0' {
			b[i] = '1'
		} else {
			b[i] = '0'
		}
		return string(b)
	}
	type check struct {
		name  string
		k     *Tokens
		id    string
		token string
		at    time.Time
		want  error // nil: any error
	}
	checks := []check{
		{"another ID", k, "job-2", tok, now, errTokenForged},
		{"an ID it prefixes", k, "job-10", tok, now, errTokenForged},
		{"another key", NewTokens(bytes.Repeat([]byte{8}, 32), 5*time.Minute), "job-1", tok, now, errTokenForged},
		{"truncated", k, "job-1", tok[:30], now, nil},
		{"empty", k, "job-1", "", now, nil},
		{"upper case", k, "job-1", strings.ToUpper(tok), now, nil},
		{"expired", k, "job-1", tok, now.Add(5*time.Minute + 2*TokenRefresh + time.Second), errTokenExpired},
		{"from the future", k, "job-1", tok, now.Add(-tokenSkew - time.Second), errTokenFuture},
	}
	for i := range tok {
		checks = append(checks, check{fmt.Sprint("hex digit ", i+1, " altered"), k, "job-1", flip(i), now, errTokenForged})
	}
	// A Tenure later than its issue time is signed, but impossible.
	checks = append(checks, check{"tenure after issue", k, "job-1", k.Sign("job-1", Tenure{since: unixSeconds(now) + 1}, now), now, errTokenFuture})
	for _, c := range checks {
		got, err := c.k.Verify(c.id, c.token, c.at)
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: verify(%q, %q) = %+v, %v; want error %v", c.name, c.id, c.token, got, err, c.want)
		}
	}
	// Still valid at the edge of its life.
	if _, err := k.Verify("job-1", tok, now.Add(5*time.Minute+2*TokenRefresh)); err != nil {
		t.Errorf("at the end of its life: %v", err)
	}
}

func TestTokenLifeFollowsGrace(t *testing.T) {
	for _, tc := range []struct {
		grace time.Duration
		want  time.Duration
	}{
		{5 * time.Minute, 7 * time.Minute},
		{-1, 2 * TokenRefresh}, // no reservations: a reconnect right away still proves the agent
	} {
		if got := NewTokens(make([]byte, 32), tc.grace).maxAge; got != tc.want {
			t.Errorf("grace %v: Tokens live %v, want %v", tc.grace, got, tc.want)
		}
	}
}

// TestTokenBoundToHostKey: a token signed for an agent's host key
// proves its claim only with that key: without it, or with another, it
// is forged (issue 18, finding 5).
func TestTokenBoundToHostKey(t *testing.T) {
	k := NewTokens([]byte("0123456789abcdef0123456789abcdef"), time.Minute)
	now := time.Unix(1_800_000_000, 0)
	key, other := []byte("host key A: 32 bytes of ed25519."), []byte("host key B: 32 bytes of ed25519.")
	tok := k.SignBound("job", Tenure{since: unixSeconds(now)}, now, key)
	if _, err := k.VerifyBound("job", tok, now, key); err != nil {
		t.Fatalf("the token with its host key: %v", err)
	}
	for name, hk := range map[string][]byte{"no host key": nil, "another host key": other} {
		if _, err := k.VerifyBound("job", tok, now, hk); !errors.Is(err, errTokenForged) {
			t.Errorf("the token with %s: %v; want errTokenForged", name, err)
		}
	}
}
