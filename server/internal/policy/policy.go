// Package policy decides which agents may register with the relay: open
// (anyone), shared tokens, or identity tokens that a CI system signs for
// its jobs (OpenID Connect: GitHub Actions, GitLab, and their
// self-hosted kinds), checked against the operator's rules. It returns
// what it verified about the job, for the relay to show.
//
// It is not an HTTP handler and does not count or log refusals: the
// server does that with the reason a Refusal carries. No credential it is
// given ever appears in an error, an Identity or a log line.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// Config says which agents may register. The zero value is open: every
// agent is let in.
type Config struct {
	// Tokens are shared registration tokens, each at least MinTokenLength
	// printable ASCII characters without spaces. Default none.
	Tokens []string
	// TokenFile holds more tokens, one per line; blank lines and lines
	// starting with # are skipped. It is read at New and again whenever
	// its modification time or size changes; a file that cannot be read
	// later keeps the tokens last read (and logs it). Default "": none.
	TokenFile string
	// Issuers are the OIDC issuers whose identity tokens are believed,
	// each with its rules. Default none.
	Issuers []Issuer
	// Audience the identity tokens must be minted for. Default "": the
	// audience given to each Check (the server's URL as the request names
	// it).
	Audience string
	// HTTPClient fetches issuers' discovery documents and keys. Default:
	// a client with a 10 s timeout.
	HTTPClient *http.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now (tests).
	Now func() time.Time
	// keyRefresh is the least time between two fetches of an issuer's
	// keys. Default keyRefresh (tests shorten it).
	keyRefresh time.Duration
}

// MinTokenLength is the shortest shared token accepted: a token is a
// password that CI systems keep, and short ones are guessed.
const MinTokenLength = 16

// Credentials are what an agent presents.
type Credentials struct {
	Token   string // a shared registration token, or ""
	IDToken string // an OIDC identity token (a JWT), or ""
	// Reconnecting: the agent proved it held its ID before (the secret of
	// its welcome), so it was admitted then. Its identity token may have
	// expired since: an agent given CONVERGE_ID_TOKEN presents the same
	// one for the life of the job, and must not be cut off by a relay
	// restart. Everything else is checked as for a first registration.
	Reconnecting bool
}

// Reasons a Refusal gives: the label of converge_refusals_total.
const (
	ReasonToken = "agent_token"
	ReasonOIDC  = "oidc"
)

// Refusal is Check's error when the agent may not register. Message
// says why in words fit for the agent to print; it holds no credential.
// Unavailable means the issuer could not be asked: the agent may retry.
type Refusal struct {
	Reason      string
	Message     string
	Unavailable bool
}

func (r *Refusal) Error() string { return r.Message }

// Policy checks agents' credentials. It is safe for concurrent use.
type Policy struct {
	log     *slog.Logger
	tokens  *tokenSet   // nil: no shared tokens
	oidc    *oidcPolicy // nil: no issuers
	now     func() time.Time
	summary string
}

// New checks cfg and returns its Policy. It reads the token file, but
// does not reach the issuers: their discovery documents are fetched at
// the first token each signs.
func New(cfg Config) (*Policy, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.keyRefresh <= 0 {
		cfg.keyRefresh = keyRefresh
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	p := &Policy{log: cfg.Logger.With("component", "policy"), now: cfg.Now}
	if len(cfg.Tokens) > 0 || cfg.TokenFile != "" {
		ts, err := newTokenSet(cfg.Tokens, cfg.TokenFile, p.log)
		if err != nil {
			return nil, err
		}
		p.tokens = ts
	}
	if len(cfg.Issuers) > 0 {
		o, err := newOIDCPolicy(cfg)
		if err != nil {
			return nil, err
		}
		p.oidc = o
	} else if cfg.Audience != "" {
		return nil, errors.New("--oidc-audience without --oidc-issuer: name the issuers whose tokens to believe")
	}
	p.summary = p.describe()
	return p, nil
}

// Open reports whether every agent is let in.
func (p *Policy) Open() bool { return p.tokens == nil && p.oidc == nil }

// String says what the policy admits, for the server's start-up log.
func (p *Policy) String() string { return p.summary }

func (p *Policy) describe() string {
	switch {
	case p.Open():
		return "open: any agent may register"
	case p.tokens != nil && p.oidc != nil:
		return fmt.Sprintf("a shared token, or an identity token from %s", p.oidc.names())
	case p.tokens != nil:
		return "a shared token"
	}
	return "an identity token from " + p.oidc.names()
}

// Check decides on an agent presenting c. audience is the server's URL
// as the agent's request names it, used when Config.Audience is empty.
// It returns what it verified, or a *Refusal. An agent that presents a
// credential the policy does not use is judged by the ones it does; one
// that presents both an identity token and a shared token is admitted by
// either, with what the identity token says when it passes.
func (p *Policy) Check(ctx context.Context, c Credentials, audience string) (Identity, error) {
	if p.Open() {
		return Identity{Via: ViaOpen}, nil
	}
	var oidcErr error
	if c.IDToken != "" && p.oidc != nil {
		id, err := p.oidc.check(ctx, c.IDToken, audience, c.Reconnecting, p.now())
		if err == nil {
			return id, nil
		}
		oidcErr = err
	}
	if c.Token != "" && p.tokens != nil {
		if p.tokens.match(c.Token) {
			return Identity{Via: ViaToken}, nil
		}
		if oidcErr == nil {
			return Identity{}, &Refusal{Reason: ReasonToken, Message: "the agent token is not one this relay accepts (check CONVERGE_AGENT_TOKEN)"}
		}
	}
	if oidcErr != nil {
		return Identity{}, oidcErr
	}
	return Identity{}, p.missing()
}

// missing is the refusal of an agent that presented nothing usable.
func (p *Policy) missing() *Refusal {
	if p.tokens != nil && p.oidc == nil {
		return &Refusal{Reason: ReasonToken, Message: "this relay admits only agents with a registration token: set CONVERGE_AGENT_TOKEN (or --agent-token)"}
	}
	r := &Refusal{Reason: ReasonOIDC, Message: "this relay admits only agents with an identity token from " + p.oidc.names() +
		": on GitHub Actions give the job `permissions: id-token: write`; elsewhere set CONVERGE_ID_TOKEN"}
	if p.tokens != nil {
		r.Message += ", or set CONVERGE_AGENT_TOKEN"
	}
	return r
}
