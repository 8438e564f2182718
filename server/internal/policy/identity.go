package policy

import (
	"net/url"
	"strings"
)

// How an agent was let in.
const (
	ViaOpen  = "open"  // the relay checks nothing
	ViaToken = "token" // a shared token: the relay knows only that the agent had one
	ViaOIDC  = "oidc"  // an identity token: the claims below are the CI system's, checked by the relay
)

// Identity is what the relay verified about an agent's job. Beyond Via,
// fields are set only for ViaOIDC, from the token's claims (GitHub's
// names first, GitLab's after); any may be empty.
type Identity struct {
	Via     string `json:"via"`
	Issuer  string `json:"issuer,omitempty"`
	Subject string `json:"subject,omitempty"`
	// Repository is the issuer's host and the repository or project
	// path: github.com/acme/app, gitlab.com/acme/group/app. The unit of
	// --max-agents-per-repo.
	Repository string `json:"repository,omitempty"`
	Workflow   string `json:"workflow,omitempty"` // workflow, or the pipeline's source
	Run        string `json:"run,omitempty"`      // run_id, or pipeline_id
	Attempt    string `json:"attempt,omitempty"`  // run_attempt
	Job        string `json:"job,omitempty"`      // GitLab's job_id
	Ref        string `json:"ref,omitempty"`
	Actor      string `json:"actor,omitempty"` // actor, or user_login
}

// fromClaims fills an Identity from verified claims of issuer.
func fromClaims(issuer string, claims map[string]string) Identity {
	first := func(names ...string) string {
		for _, n := range names {
			if v := claims[n]; v != "" {
				return v
			}
		}
		return ""
	}
	id := Identity{
		Via:      ViaOIDC,
		Issuer:   issuer,
		Subject:  claims["sub"],
		Workflow: first("workflow", "pipeline_source"),
		Run:      first("run_id", "pipeline_id"),
		Attempt:  claims["run_attempt"],
		Job:      claims["job_id"],
		Ref:      first("ref"),
		Actor:    first("actor", "user_login"),
	}
	if repo := first("repository", "project_path"); repo != "" {
		id.Repository = issuerHost(issuer) + "/" + repo
	}
	return id
}

// issuerHost names where an issuer's repositories live: github.com for
// GitHub Actions' issuer, the host for any other (gitlab.com, a GitHub
// Enterprise Server or a self-hosted GitLab).
func issuerHost(issuer string) string {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" {
		return issuer
	}
	if u.Hostname() == "token.actions.githubusercontent.com" {
		return "github.com"
	}
	return u.Host
}

// Verified is Summary for an identity the relay verified from a CI
// system's token, with control characters dropped so that it fits an
// HTTP header and a terminal; "" for any other.
func (id Identity) Verified() string {
	if id.Via != ViaOIDC {
		return ""
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, id.Summary())
}

// Summary is the identity in a phrase: "github.com/acme/app, workflow
// CI, refs/heads/main, run 123 attempt 1, by alice"; for a shared token
// "an agent with a registration token"; "" when open.
func (id Identity) Summary() string {
	switch id.Via {
	case ViaToken:
		return "an agent with a registration token"
	case ViaOIDC:
	default:
		return ""
	}
	var parts []string
	add := func(s string) {
		if s != "" {
			parts = append(parts, s)
		}
	}
	add(id.Repository)
	if id.Workflow != "" {
		add("workflow " + id.Workflow)
	}
	add(id.Ref)
	if id.Run != "" {
		run := "run " + id.Run
		if id.Attempt != "" {
			run += " attempt " + id.Attempt
		}
		add(run)
	}
	if id.Job != "" {
		add("job " + id.Job)
	}
	s := strings.Join(parts, ", ")
	if id.Actor != "" {
		s += ", by " + id.Actor
	}
	if s == "" {
		s = "a job of " + issuerHost(id.Issuer)
	}
	return s
}
