package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/issuertest"
)

const aud = "http://relay.test"

func mustRule(t *testing.T, s string) Rule {
	t.Helper()
	r, err := ParseRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func refusal(t *testing.T, err error) *Refusal {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("error %v is not a Refusal", err)
	}
	return r
}

func TestOpen(t *testing.T) {
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := p.Check(context.Background(), Credentials{}, aud)
	if err != nil || id.Via != ViaOpen || !p.Open() {
		t.Fatalf("open policy: %+v, %v", id, err)
	}
}

func TestTokens(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	os.WriteFile(file, []byte("# ops team\n\nfile-token-0123456789\n"), 0o600)
	p, err := New(Config{Tokens: []string{"env-token-0123456789"}, TokenFile: file})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tok := range []string{"env-token-0123456789", "file-token-0123456789"} {
		if id, err := p.Check(ctx, Credentials{Token: tok}, aud); err != nil || id.Via != ViaToken {
			t.Errorf("token %q: %+v, %v", tok, id, err)
		}
	}
	for _, c := range []Credentials{{}, {Token: "wrong-token-0123456789"}, {Token: "file-token-012345678"}} {
		_, err := p.Check(ctx, c, aud)
		if r := refusal(t, err); r.Reason != ReasonToken || strings.Contains(r.Message, "0123") {
			t.Errorf("credentials %+v: refusal %+v", c, r)
		}
	}
	// Re-read on change: the old file token goes, a new one comes.
	os.WriteFile(file, []byte("another-token-0123456789-longer\n"), 0o600)
	if _, err := p.Check(ctx, Credentials{Token: "file-token-0123456789"}, aud); err == nil {
		t.Error("a token removed from the file still admits")
	}
	if _, err := p.Check(ctx, Credentials{Token: "another-token-0123456789-longer"}, aud); err != nil {
		t.Errorf("a token added to the file: %v", err)
	}
	if _, err := New(Config{Tokens: []string{"tiny-tok"}}); err == nil || strings.Contains(err.Error(), "tiny-tok") {
		t.Errorf("short token: %v (must refuse, without echoing it)", err)
	}
}

func TestOIDC(t *testing.T) {
	is := issuertest.Start(t)
	other := issuertest.Start(t)
	p, err := New(Config{Issuers: []Issuer{
		{URL: is.URL, Allow: []Rule{mustRule(t, "repository=acme/*"), mustRule(t, "repository_owner=friends&ref=refs/heads/main")}},
		{URL: "http://127.0.0.1:1"}, // no rules: admits nothing, never reached
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	good := is.GitHub("acme/app", aud)
	id, err := p.Check(ctx, Credentials{IDToken: is.Sign(good)}, aud)
	if err != nil {
		t.Fatal(err)
	}
	if want := "127.0.0.1"; !strings.HasPrefix(id.Repository, want) || id.Run != "123" || id.Actor != "alice" {
		t.Errorf("identity %+v", id)
	}
	if got := id.Summary(); !strings.Contains(got, "/acme/app") || !strings.Contains(got, "run 123 attempt 1, by alice") {
		t.Errorf("summary %q", got)
	}
	if _, err := p.Check(ctx, Credentials{IDToken: is.Sign(is.GitHub("friends/x", aud))}, aud); err != nil {
		t.Errorf("second rule: %v", err)
	}
	expired := is.GitHub("acme/app", aud)
	expired["exp"] = time.Now().Add(-time.Minute).Unix()
	cases := []struct {
		name, token, want string
	}{
		{"expired", is.Sign(expired), "expired"},
		{"other audience", is.Sign(is.GitHub("acme/app", "http://elsewhere")), "audience"},
		{"alg none", issuertest.Unsigned(good), "signature"},
		{"foreign key", is.SignElsewhere(good), "signature"},
		{"repository fails the rules", is.Sign(is.GitHub("evil/app", aud)), "not allowed"},
		{"untrusted issuer", other.Sign(other.GitHub("acme/app", aud)), "not one this relay trusts"},
		{"issuer without rules", func() string { c := is.GitHub("acme/app", aud); c["iss"] = "http://127.0.0.1:1"; return is.Sign(c) }(), ""},
		{"not a JWT", "garbage", "not a signed JWT"},
	}
	for _, c := range cases {
		_, err := p.Check(ctx, Credentials{IDToken: c.token}, aud)
		if err == nil {
			t.Errorf("%s: admitted", c.name)
			continue
		}
		r := refusal(t, err)
		if r.Reason != ReasonOIDC || !strings.Contains(r.Message, c.want) {
			t.Errorf("%s: refusal %+v, want reason oidc and %q", c.name, r, c.want)
		}
		if strings.Contains(r.Message, c.token) {
			t.Errorf("%s: the refusal holds the token", c.name)
		}
	}
	if _, err := p.Check(ctx, Credentials{}, aud); refusal(t, err).Reason != ReasonOIDC {
		t.Errorf("no token: %v", err)
	}
}

// TestKeyRotation: the issuer's keys are fetched at the first token,
// and again for a token signed with a key they lack, at most once per
// keyRefresh; forged tokens, signed with keys the issuer never
// published, fetch nothing.
func TestKeyRotation(t *testing.T) {
	is := issuertest.Start(t)
	p, err := New(Config{Issuers: []Issuer{{URL: is.URL, Allow: []Rule{mustRule(t, "repository=acme/app")}}}, Audience: "converge", keyRefresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	check := func(tok string) error {
		_, err := p.Check(ctx, Credentials{IDToken: tok}, aud)
		return err
	}
	for i := range 3 {
		c := is.GitHub("acme/app", "converge")
		c["run_id"] = i
		if err := check(is.Sign(c)); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		if err := check(is.SignElsewhere(is.GitHub("acme/app", "converge"))); err == nil || refusal(t, err).Unavailable {
			t.Fatalf("forged token: %v, want a final refusal", err)
		}
	}
	if n := is.JWKSFetches.Load(); n != 1 {
		t.Errorf("keys fetched %d times for three tokens of one key and five forged ones, want 1", n)
	}
	is.Rotate()
	err = check(is.Sign(is.GitHub("acme/app", "converge")))
	if err == nil || !refusal(t, err).Unavailable {
		t.Fatalf("a new key within keyRefresh of the last fetch: %v, want unavailable (the agent retries)", err)
	}
	p.oidc.issuers[is.URL].verifier = nil // as after keyRefresh: a fresh key set
	if err := check(is.Sign(is.GitHub("acme/app", "converge"))); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if n := is.JWKSFetches.Load(); n != 2 {
		t.Errorf("keys fetched %d times after a rotation, want 2", n)
	}
}

// TestKeyRefreshAfterRotation: once keyRefresh has passed, a token of a
// new key fetches the keys again and verifies.
func TestKeyRefreshAfterRotation(t *testing.T) {
	is := issuertest.Start(t)
	now := time.Now()
	clock := func() time.Time { return now }
	p, err := New(Config{Issuers: []Issuer{{URL: is.URL, Allow: []Rule{mustRule(t, "repository=acme/app")}}}, Audience: "converge", Now: clock, keyRefresh: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := p.Check(ctx, Credentials{IDToken: is.Sign(is.GitHub("acme/app", "converge"))}, aud); err != nil {
		t.Fatal(err)
	}
	is.Rotate()
	now = now.Add(2 * time.Minute)
	c := is.GitHub("acme/app", "converge")
	c["iat"], c["nbf"], c["exp"] = now.Unix(), now.Unix(), now.Add(10*time.Minute).Unix()
	if _, err := p.Check(ctx, Credentials{IDToken: is.Sign(c)}, aud); err != nil {
		t.Fatalf("a new key after keyRefresh: %v", err)
	}
}

// TestEitherAdmits: with tokens and issuers both set, a valid shared
// token admits an agent whose identity token fails, and a valid
// identity token one whose shared token is wrong.
func TestEitherAdmits(t *testing.T) {
	is := issuertest.Start(t)
	p, err := New(Config{Tokens: []string{"shared-token-0123456789"}, Issuers: []Issuer{{URL: is.URL, Allow: []Rule{mustRule(t, "repository=acme/*")}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := p.Check(ctx, Credentials{Token: "shared-token-0123456789", IDToken: is.Sign(is.GitHub("evil/app", aud))}, aud)
	if err != nil || id.Via != ViaToken {
		t.Errorf("valid token, refused identity token: %+v, %v", id, err)
	}
	id, err = p.Check(ctx, Credentials{Token: "wrong-token-0123456789", IDToken: is.Sign(is.GitHub("acme/app", aud))}, aud)
	if err != nil || id.Via != ViaOIDC {
		t.Errorf("wrong token, valid identity token: %+v, %v", id, err)
	}
	_, err = p.Check(ctx, Credentials{Token: "wrong-token-0123456789", IDToken: is.Sign(is.GitHub("evil/app", aud))}, aud)
	if r := refusal(t, err); r.Reason != ReasonOIDC || !strings.Contains(r.Message, "evil/app") {
		t.Errorf("both refused: %+v, want the identity token's reason", r)
	}
}

func TestIssuerURL(t *testing.T) {
	for _, u := range []string{"http://issuer.example.com", "ftp://x", "nope"} {
		if _, err := New(Config{Issuers: []Issuer{{URL: u}}}); err == nil {
			t.Errorf("issuer %q accepted", u)
		}
	}
	for _, u := range []string{"https://token.actions.githubusercontent.com", "http://127.0.0.1:9", "http://localhost:9"} {
		if _, err := New(Config{Issuers: []Issuer{{URL: u}}}); err != nil {
			t.Errorf("issuer %q: %v", u, err)
		}
	}
}

func BenchmarkCheckFresh(b *testing.B) {
	is := issuertest.Start(b)
	p, err := New(Config{Issuers: []Issuer{{URL: is.URL, Allow: []Rule{{{Claim: "repository", Glob: "acme/*"}}}}}, Audience: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	tokens := make([]string, b.N)
	for i := range tokens {
		c := is.GitHub("acme/app", "bench")
		c["run_id"] = i
		tokens[i] = is.Sign(c)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := p.Check(context.Background(), Credentials{IDToken: tokens[i]}, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// TestReconnectingPastExpiry: an agent that proved its ID (Reconnecting)
// may present its identity token after it expired, with the rest still
// checked; a first registration may not.
func TestReconnectingPastExpiry(t *testing.T) {
	is := issuertest.Start(t)
	p, err := New(Config{Issuers: []Issuer{{URL: is.URL, Allow: []Rule{mustRule(t, "repository=acme/*")}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	expired := is.GitHub("acme/app", aud)
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	tok := is.Sign(expired)
	if _, err := p.Check(ctx, Credentials{IDToken: tok}, aud); err == nil {
		t.Fatal("an expired token registers anew")
	}
	id, err := p.Check(ctx, Credentials{IDToken: tok, Reconnecting: true}, aud)
	if err != nil || id.Actor != "alice" {
		t.Fatalf("an expired token reconnecting: %+v, %v", id, err)
	}
	if _, err := p.Check(ctx, Credentials{IDToken: tok}, aud); err == nil {
		t.Fatal("an expired token admitted for a reconnection is then remembered for anyone")
	}
	for name, c := range map[string]issuertest.Claims{
		"other repository": is.GitHub("evil/app", aud),
		"other audience":   is.GitHub("acme/app", "http://elsewhere"),
	} {
		c["exp"] = time.Now().Add(-time.Hour).Unix()
		if _, err := p.Check(ctx, Credentials{IDToken: is.Sign(c), Reconnecting: true}, aud); err == nil {
			t.Errorf("%s, reconnecting: admitted", name)
		}
	}
	if _, err := p.Check(ctx, Credentials{IDToken: is.SignElsewhere(expired), Reconnecting: true}, aud); err == nil {
		t.Error("a forged token, reconnecting: admitted")
	}
}
