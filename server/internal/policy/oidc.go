package policy

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// Issuer is an OIDC issuer whose tokens are believed when they satisfy
// any of its rules. An issuer without rules admits nothing: trusting all
// of GitHub's or GitLab's jobs is never what an operator means.
type Issuer struct {
	// URL is the issuer as its tokens' iss claim names it, such as
	// https://token.actions.githubusercontent.com or https://gitlab.com.
	// https only; http only on a loopback host (tests).
	URL string
	// Allow are rules (see ParseRule); any one may match.
	Allow []Rule
}

// Rule is a set of conditions on a token's claims, all of which must
// hold: "repository=acme/*" or "project_path=acme/app&ref=refs/heads/main".
type Rule []Condition

// Condition is one CLAIM=GLOB: the claim, as a string (numbers and
// booleans written out), matches the glob by path.Match, so * stops at
// a "/" (acme/* is every repository of acme, not of its subgroups).
type Condition struct {
	Claim, Glob string
}

// ParseRule parses CLAIM=GLOB[&CLAIM=GLOB...].
func ParseRule(s string) (Rule, error) {
	var r Rule
	for _, part := range strings.Split(s, "&") {
		claim, glob, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || claim == "" || glob == "" {
			return nil, fmt.Errorf("OIDC rule %q: want CLAIM=GLOB, several joined by &, e.g. repository=acme/*", s)
		}
		if _, err := path.Match(glob, ""); err != nil {
			return nil, fmt.Errorf("OIDC rule %q: bad glob %q: %w", s, glob, err)
		}
		r = append(r, Condition{Claim: claim, Glob: glob})
	}
	return r, nil
}

func (r Rule) String() string {
	var parts []string
	for _, c := range r {
		parts = append(parts, c.Claim+"="+c.Glob)
	}
	return strings.Join(parts, "&")
}

// matches reports whether every condition holds for claims; a claim the
// token lacks holds none.
func (r Rule) matches(claims map[string]string) bool {
	for _, c := range r {
		v, ok := claims[c.Claim]
		if !ok {
			return false
		}
		if m, _ := path.Match(c.Glob, v); !m {
			return false
		}
	}
	return len(r) > 0
}

// checkIssuerURL allows https, and http only on loopback.
func checkIssuerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("OIDC issuer %q: not a URL", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			return nil
		}
		return fmt.Errorf("OIDC issuer %q: http is allowed only on a loopback host (tests); use https", raw)
	}
	return fmt.Errorf("OIDC issuer %q: use https", raw)
}

// oidcPolicy checks identity tokens against the trusted issuers.
type oidcPolicy struct {
	cfg     Config
	issuers map[string]*issuer // by URL
	order   []string

	// admitted remembers tokens that passed, by the SHA-256 sum of the
	// token and the audience, until they expire: an agent presents the
	// same token again on every reconnection (CONVERGE_ID_TOKEN), and a
	// herd of them after a restart should not cost a signature check
	// each. At most maxAdmitted; when full it is emptied.
	mu       sync.Mutex
	admitted map[[sha256.Size]byte]admittedToken
}

type admittedToken struct {
	id     Identity
	expiry time.Time
}

// maxAdmitted bounds oidcPolicy.admitted (an entry is a few hundred bytes).
const maxAdmitted = 16384

// issuer is one trusted issuer and its verifier, made at its first token
// (discovery). go-oidc's verifier caches the issuer's keys (JWKS) and
// fetches them again when a token names a key ID it does not know, so a
// key rotation costs one fetch and steady state none.
type issuer struct {
	Issuer
	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	lenient  *oidc.IDTokenVerifier // the same, without the expiry check: for reconnections
	failedAt time.Time             // last failed discovery, to not hammer the issuer
}

func newOIDCPolicy(cfg Config) (*oidcPolicy, error) {
	o := &oidcPolicy{cfg: cfg, issuers: map[string]*issuer{}, admitted: map[[sha256.Size]byte]admittedToken{}}
	for _, is := range cfg.Issuers {
		if err := checkIssuerURL(is.URL); err != nil {
			return nil, err
		}
		if _, dup := o.issuers[is.URL]; dup {
			return nil, fmt.Errorf("OIDC issuer %q given twice: give its rules after one --oidc-issuer", is.URL)
		}
		if len(is.Allow) == 0 {
			cfg.Logger.Warn("OIDC issuer without rules admits nothing; add --oidc-allow CLAIM=GLOB after it", "issuer", is.URL)
		}
		o.issuers[is.URL] = &issuer{Issuer: is}
		o.order = append(o.order, is.URL)
	}
	return o, nil
}

func (o *oidcPolicy) names() string { return strings.Join(o.order, " or ") }

func refuseOIDC(format string, args ...any) *Refusal {
	return &Refusal{Reason: ReasonOIDC, Message: "identity token refused: " + fmt.Sprintf(format, args...)}
}

// check verifies raw: issued by a trusted issuer, signed with one of its
// keys, for the audience, unexpired, and allowed by a rule.
func (o *oidcPolicy) check(ctx context.Context, raw, audience string, reconnecting bool, now time.Time) (Identity, error) {
	want := o.cfg.Audience
	if want == "" {
		want = audience
	}
	key := sha256.Sum256([]byte(want + "\x00" + raw))
	o.mu.Lock()
	hit, ok := o.admitted[key]
	o.mu.Unlock()
	if ok && now.Before(hit.expiry) {
		return hit.id, nil
	}
	id, expiry, err := o.verify(ctx, raw, want, reconnecting)
	if err != nil {
		return Identity{}, err
	}
	if !now.Before(expiry) {
		return id, nil // admitted past its expiry, for a reconnection: not to be remembered
	}
	o.mu.Lock()
	if len(o.admitted) >= maxAdmitted {
		clear(o.admitted)
	}
	o.admitted[key] = admittedToken{id: id, expiry: expiry}
	o.mu.Unlock()
	return id, nil
}

// verify checks raw for audience want, and returns what it verified and
// when the token expires.
func (o *oidcPolicy) verify(ctx context.Context, raw, want string, reconnecting bool) (Identity, time.Time, error) {
	now := o.cfg.Now()
	iss, err := unverifiedIssuer(raw)
	if err != nil {
		return Identity{}, time.Time{}, refuseOIDC("%v", err)
	}
	is := o.issuers[iss]
	if is == nil {
		return Identity{}, time.Time{}, refuseOIDC("its issuer %q is not one this relay trusts (%s)", iss, o.names())
	}
	v, lenient, err := is.verifierFor(o.cfg, now)
	if reconnecting {
		v = lenient
	}
	if err != nil {
		return Identity{}, time.Time{}, &Refusal{Reason: ReasonOIDC, Unavailable: true, Message: "cannot check identity tokens now: " + err.Error()}
	}
	var keysErr error
	tok, err := v.Verify(context.WithValue(ctx, keyErrKey{}, &keysErr), raw)
	var expired *oidc.TokenExpiredError
	switch {
	case keysErr != nil:
		return Identity{}, time.Time{}, &Refusal{Reason: ReasonOIDC, Unavailable: true, Message: "cannot check identity tokens now: " + keysErr.Error()}
	case errors.As(err, &expired):
		return Identity{}, time.Time{}, refuseOIDC("it expired at %s", expired.Expiry.UTC().Format(time.RFC3339))
	case err != nil:
		return Identity{}, time.Time{}, refuseOIDC("%s", strings.TrimPrefix(err.Error(), "oidc: "))
	}
	if !slices.Contains(tok.Audience, want) {
		return Identity{}, time.Time{}, refuseOIDC("it is for audience %q, not this relay's %q (the token must be requested for it; a relay behind a proxy sets --oidc-audience or --trusted-proxy)", strings.Join(tok.Audience, ","), want)
	}
	claims, err := flatClaims(tok)
	if err != nil {
		return Identity{}, time.Time{}, refuseOIDC("%v", err)
	}
	id := fromClaims(iss, claims)
	for _, r := range is.Allow {
		if r.matches(claims) {
			return id, tok.Expiry, nil
		}
	}
	who := id.Repository
	if who == "" {
		who = "subject " + claims["sub"]
	}
	return Identity{}, time.Time{}, refuseOIDC("%s is not allowed by this relay's rules for %s", who, iss)
}

// discoveryRetry is how long after a failed discovery the next token
// waits before the issuer is asked again.
const discoveryRetry = 10 * time.Second

// verifierFor returns the issuer's verifiers (see issuer), discovering
// it first.
func (is *issuer) verifierFor(cfg Config, now time.Time) (strict, lenient *oidc.IDTokenVerifier, err error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.verifier != nil {
		return is.verifier, is.lenient, nil
	}
	if !is.failedAt.IsZero() && now.Sub(is.failedAt) < discoveryRetry {
		return nil, nil, fmt.Errorf("issuer %s was unreachable moments ago; retry shortly", is.URL)
	}
	ctx, cancel := context.WithTimeout(oidc.ClientContext(context.Background(), cfg.HTTPClient), 10*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(ctx, is.URL)
	var doc struct {
		JWKS string   `json:"jwks_uri"`
		Algs []string `json:"id_token_signing_alg_values_supported"`
	}
	if err == nil {
		err = p.Claims(&doc)
	}
	if err != nil {
		is.failedAt = now
		return nil, nil, fmt.Errorf("discover issuer %s: %w", is.URL, err)
	}
	algs := signingAlgs(doc.Algs)
	keys := &keySet{url: doc.JWKS, client: cfg.HTTPClient, now: cfg.Now, every: cfg.keyRefresh}
	var names []string
	for _, a := range algs {
		keys.algs = append(keys.algs, jose.SignatureAlgorithm(a))
		names = append(names, a)
	}
	// The audience is checked by check, against the relay's.
	is.verifier = oidc.NewVerifier(is.URL, keys, &oidc.Config{SkipClientIDCheck: true, SupportedSigningAlgs: names, Now: cfg.Now})
	is.lenient = oidc.NewVerifier(is.URL, keys, &oidc.Config{SkipClientIDCheck: true, SupportedSigningAlgs: names, SkipExpiryCheck: true})
	return is.verifier, is.lenient, nil
}

// signingAlgs are the issuer's published signing algorithms that are
// public-key ones; RS256, which every issuer must support, when it
// publishes none. A shared-secret or "none" algorithm never verifies.
func signingAlgs(published []string) []string {
	var out []string
	for _, a := range published {
		switch a {
		case "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA":
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []string{"RS256"}
	}
	return out
}

// unverifiedIssuer reads iss from raw's payload without checking
// anything, only to pick the issuer whose keys then check it all.
func unverifiedIssuer(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", errors.New("it is not a signed JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", errors.New("its payload is not base64url")
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Iss == "" {
		return "", errors.New("its payload names no issuer")
	}
	return c.Iss, nil
}

// flatClaims returns tok's top-level claims as strings: numbers and
// booleans written out, other kinds left out.
func flatClaims(tok *oidc.IDToken) (map[string]string, error) {
	var all map[string]any
	if err := tok.Claims(&all); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(all))
	for k, v := range all {
		switch v := v.(type) {
		case string:
			out[k] = v
		case float64:
			out[k] = strconv.FormatFloat(v, 'f', -1, 64)
		case bool:
			out[k] = strconv.FormatBool(v)
		}
	}
	return out, nil
}
