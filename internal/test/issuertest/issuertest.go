// Package issuertest is an OpenID Connect issuer for tests: on
// 127.0.0.1:0 it serves a discovery document and its keys (JWKS), and
// signs identity tokens with an RSA key it makes, as GitHub Actions' and
// GitLab's issuers do. It is not a login server: tokens are minted by
// the test, with the claims the test chooses.
package issuertest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Issuer is a running test issuer.
type Issuer struct {
	URL string // the issuer, http://127.0.0.1:PORT

	t      testing.TB
	mu     sync.Mutex
	key    *rsa.PrivateKey
	kid    string
	keyGen int
	// JWKSFetches counts requests for the keys.
	JWKSFetches atomic.Int64
}

// Start runs an issuer until the test ends.
func Start(t testing.TB) *Issuer {
	t.Helper()
	is := &Issuer{t: t}
	is.Rotate()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	is.URL = srv.URL
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                is.URL,
			"jwks_uri":                              is.URL + "/keys",
			"id_token_signing_alg_values_supported": []string{"RS256"},
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
		})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		is.JWKSFetches.Add(1)
		is.mu.Lock()
		set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}}
		is.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
	})
	return is
}

// Rotate replaces the signing key (and its key ID): tokens signed before
// no longer verify once a verifier has fetched the new keys.
func (is *Issuer) Rotate() {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		is.t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keyGen++
	is.key, is.kid = key, "key-"+string(rune('0'+is.keyGen%10))
}

// Claims are a token's claims.
type Claims map[string]any

// GitHub returns claims like those of a GitHub Actions job of repo for
// audience, valid for ten minutes.
func (is *Issuer) GitHub(repo, audience string) Claims {
	now := time.Now()
	return Claims{
		"iss": is.URL, "aud": audience, "sub": "repo:" + repo + ":ref:refs/heads/main",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"repository": repo, "repository_owner": ownerOf(repo), "workflow": "CI", "ref": "refs/heads/main",
		"run_id": "123", "run_attempt": "1", "actor": "alice", "event_name": "push",
	}
}

func ownerOf(repo string) string {
	for i := range len(repo) {
		if repo[i] == '/' {
			return repo[:i]
		}
	}
	return repo
}

// Sign returns claims signed with the issuer's key, as a JWT.
func (is *Issuer) Sign(c Claims) string {
	is.mu.Lock()
	key, kid := is.key, is.kid
	is.mu.Unlock()
	return sign(is.t, key, kid, c)
}

// SignElsewhere returns claims signed with a key the issuer never
// published, under the issuer's current key ID.
func (is *Issuer) SignElsewhere(c Claims) string {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		is.t.Fatal(err)
	}
	is.mu.Lock()
	kid := is.kid
	is.mu.Unlock()
	return sign(is.t, key, kid, c)
}

func sign(t testing.TB, key *rsa.PrivateKey, kid string, c Claims) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Unsigned returns claims as a JWT with "alg": "none" and no signature.
func Unsigned(c Claims) string {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	p, _ := json.Marshal(c)
	return enc.EncodeToString(h) + "." + enc.EncodeToString(p) + "."
}
