package server

import (
	"flag"
	"testing"
)

func TestOIDCFlags(t *testing.T) {
	var issuers []OIDCIssuer
	f := NewOIDCFlags(&issuers)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Var(f.Issuer(), "oidc-issuer", "")
	fs.Var(f.Allow(), "oidc-allow", "")
	err := fs.Parse([]string{
		"--oidc-allow", "repository_owner=early", // before any issuer: the first's
		"--oidc-issuer", "https://token.actions.githubusercontent.com/",
		"--oidc-allow", "repository=acme/*",
		"--oidc-issuer", "https://gitlab.com",
		"--oidc-allow", "project_path=acme/*&ref=refs/heads/main, namespace_path=ops",
	})
	if err != nil || f.Err() != nil {
		t.Fatal(err, f.Err())
	}
	if len(issuers) != 2 || issuers[0].URL != "https://token.actions.githubusercontent.com" || len(issuers[0].Allow) != 2 || len(issuers[1].Allow) != 2 {
		t.Fatalf("issuers %+v", issuers)
	}
	if got := issuers[1].Allow[0].String(); got != "project_path=acme/*&ref=refs/heads/main" {
		t.Errorf("rule %q", got)
	}
	var none []OIDCIssuer
	g := NewOIDCFlags(&none)
	if g.Allow().Set("repository=x") != nil || g.Err() == nil {
		t.Error("a rule without an issuer is accepted")
	}
	if g.Allow().Set("repository") == nil {
		t.Error("a rule without = is accepted")
	}
}
