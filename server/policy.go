package server

import (
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/server/internal/policy"
)

// OIDCIssuer is an OIDC issuer whose identity tokens admit agents that
// satisfy one of its rules (see Config.OIDCIssuers).
type OIDCIssuer = policy.Issuer

// OIDCFlags fills Config.OIDCIssuers from the repeatable flags
// --oidc-issuer URL and --oidc-allow CLAIM=GLOB[&CLAIM=GLOB...], in
// command-line order: each rule belongs to the issuer before it. Rules
// given before any issuer (as from the environment, where the order is
// lost) belong to the first. From the environment each takes a
// comma-separated list.
type OIDCFlags struct {
	dst     *[]OIDCIssuer
	pending []policy.Rule // rules given before any issuer
}

// NewOIDCFlags returns flags that append to dst.
func NewOIDCFlags(dst *[]OIDCIssuer) *OIDCFlags { return &OIDCFlags{dst: dst} }

// Issuer is the --oidc-issuer flag.
func (f *OIDCFlags) Issuer() flag.Value { return oidcFlag{f, false} }

// Allow is the --oidc-allow flag.
func (f *OIDCFlags) Allow() flag.Value { return oidcFlag{f, true} }

// Err reports rules that belong to no issuer; call it after parsing.
func (f *OIDCFlags) Err() error {
	if len(f.pending) > 0 {
		return fmt.Errorf("--oidc-allow %s: give an --oidc-issuer for it", f.pending[0])
	}
	return nil
}

type oidcFlag struct {
	f     *OIDCFlags
	allow bool
}

func (o oidcFlag) String() string { return "" }

func (o oidcFlag) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		if err := o.set(part); err != nil {
			return err
		}
	}
	return nil
}

func (o oidcFlag) set(v string) error {
	f := o.f
	if !o.allow {
		*f.dst = append(*f.dst, OIDCIssuer{URL: strings.TrimRight(v, "/"), Allow: f.pending})
		f.pending = nil
		return nil
	}
	r, err := policy.ParseRule(v)
	if err != nil {
		return err
	}
	if n := len(*f.dst); n > 0 {
		(*f.dst)[n-1].Allow = append((*f.dst)[n-1].Allow, r)
		return nil
	}
	f.pending = append(f.pending, r)
	return nil
}

// setupPolicy makes the registration policy and the per-repository
// quota (counted in the cluster's Redis when there is one).
func (s *Server) setupPolicy() error {
	p, err := policy.New(policy.Config{
		Tokens:    s.cfg.AgentTokens,
		TokenFile: s.cfg.AgentTokenFile,
		Issuers:   s.cfg.OIDCIssuers,
		Audience:  s.cfg.OIDCAudience,
		Logger:    s.cfg.Logger,
	})
	if err != nil {
		return err
	}
	s.policy = p
	s.quota = policy.NewQuota(s.cfg.MaxAgentsPerRepo, nil)
	if s.cluster != nil {
		s.quota = policy.NewQuota(s.cfg.MaxAgentsPerRepo, s.cluster.rdb)
	}
	aud := s.cfg.OIDCAudience
	if aud == "" && len(s.cfg.OIDCIssuers) > 0 {
		aud = "this server's URL as each request names it"
	}
	s.log.Info("registration policy", "admits", p.String(), "oidc_audience", aud, "max_agents_per_repo", s.cfg.MaxAgentsPerRepo)
	return nil
}

// admitAgent applies the registration policy and the per-repository
// quota to the agent at remote asking for id, which proved it holds key
// (nil: none), before anything is held for it. On refusal it answers r (401: the credential, final; 429: the
// repository's quota, which may clear; 503: an issuer or Redis that did
// not answer) and returns ok false. release uncounts the agent.
func (s *Server) admitAgent(w http.ResponseWriter, r *http.Request, id, remote string, key ed25519.PublicKey) (who policy.Identity, release func(), ok bool) {
	base, _ := s.bases(r)
	secret := r.Header.Get(wire.SecretHeader)
	_, unproven := s.tokens.VerifyBound(id, secret, time.Now(), key)
	who, err := s.policy.Check(r.Context(), policy.Credentials{
		Token:        r.Header.Get(wire.AgentTokenHeader),
		IDToken:      r.Header.Get(wire.IDTokenHeader),
		Reconnecting: secret != "" && unproven == nil,
	}, base)
	var ref *policy.Refusal
	if errors.As(err, &ref) {
		s.log.Info("agent refused", "id", id, "remote", remote, "reason", ref.Reason, "why", ref.Message)
		s.metrics.refused(endpointAgent, ref.Reason)
		if ref.Unavailable {
			http.Error(w, ref.Message, http.StatusServiceUnavailable)
			return who, nil, false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="converge agents"`)
		http.Error(w, ref.Message, http.StatusUnauthorized)
		return who, nil, false
	}
	release, err = s.quota.Acquire(r.Context(), who.Repository, id)
	if err != nil {
		s.log.Info("agent refused", "id", id, "remote", remote, "reason", reasonRepoLimit, "why", err)
		s.metrics.refused(endpointAgent, reasonRepoLimit)
		status := http.StatusTooManyRequests
		var full *policy.QuotaError
		if !errors.As(err, &full) {
			status = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), status)
		return who, nil, false
	}
	s.metrics.admitted(who.Via)
	return who, release, true
}
