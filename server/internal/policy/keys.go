package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// keySet is an issuer's published keys (its JWKS), for go-oidc's
// verifier. It is fetched at the first token and again when a token
// names a key ID it lacks (the issuer rotated its keys), but at most
// once per keyRefresh: go-oidc's own RemoteKeySet fetches again after
// every signature that fails, so forged tokens, which anyone may send,
// would make the relay hammer the issuer (and be throttled by it). A
// token naming an unknown key within keyRefresh of the last fetch is
// refused as unavailable, so its agent retries.
type keySet struct {
	url    string
	client *http.Client
	now    func() time.Time
	algs   []jose.SignatureAlgorithm
	every  time.Duration // keyRefresh, shorter in tests

	mu       sync.Mutex
	keys     []jose.JSONWebKey
	fetched  time.Time // of the last fetch begun; zero before the first
	fetching bool
}

// keyRefresh is the least time between two fetches of an issuer's keys.
const keyRefresh = 30 * time.Second

// errKeysBusy: the token names a key the relay does not have, and the
// keys were fetched moments ago; the agent may retry.
var errKeysBusy = errors.New("the token names a key this relay does not know, and the issuer's keys were fetched moments ago; retry shortly")

// maxJWKS bounds an issuer's answer.
const maxJWKS = 1 << 20

// keyErrKey is the context key of a *error that VerifySignature sets
// when the keys could not be had (errKeysBusy, a failed fetch): go-oidc
// passes its errors on as text only, and these are not the token's fault.
type keyErrKey struct{}

// VerifySignature is oidc.KeySet's: the payload of jwt if one of the
// issuer's keys, the one its header names, verifies its signature.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	payload, unavailable, err := k.verify(ctx, jwt)
	if sink, ok := ctx.Value(keyErrKey{}).(*error); ok && unavailable {
		*sink = err
	}
	return payload, err
}

func (k *keySet) verify(ctx context.Context, jwt string) (payload []byte, unavailable bool, err error) {
	jws, err := jose.ParseSigned(jwt, k.algs)
	if err != nil {
		return nil, false, fmt.Errorf("malformed jwt: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, false, errors.New("the token must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, err := k.keysFor(ctx, kid)
	if err != nil {
		return nil, true, err
	}
	for _, key := range keys {
		if kid == "" || key.KeyID == kid {
			if payload, err := jws.Verify(&key); err == nil {
				return payload, false, nil
			}
		}
	}
	return nil, false, errors.New("the signature does not verify with the issuer's keys")
}

// keysFor returns the keys, fetched anew first if none has ID kid and
// the last fetch was keyRefresh ago or more.
func (k *keySet) keysFor(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	keys := k.keys
	known := false
	for _, key := range keys {
		known = known || kid == "" || key.KeyID == kid
	}
	if known {
		k.mu.Unlock()
		return keys, nil
	}
	if k.fetching || (!k.fetched.IsZero() && k.now().Sub(k.fetched) < k.every) {
		k.mu.Unlock()
		return nil, errKeysBusy
	}
	k.fetching, k.fetched = true, k.now()
	k.mu.Unlock()

	fresh, err := k.fetch(context.WithoutCancel(ctx)) // for every token waiting on it, not only this one
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fetching = false
	if err != nil {
		return nil, err
	}
	k.keys = fresh
	return fresh, nil
}

// fetch reads the issuer's JWKS.
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch the issuer's keys: %w", err)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch the issuer's keys: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch the issuer's keys: %s answered %s", k.url, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJWKS)).Decode(&set); err != nil {
		return nil, fmt.Errorf("the issuer's keys at %s: %w", k.url, err)
	}
	return set.Keys, nil
}
