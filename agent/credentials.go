package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// credentials adds the agent's registration credentials to the headers
// of its control upgrade: the shared token, and an identity token, given
// (Config.IDToken) or, on GitHub Actions with `id-token: write`, asked
// of GitHub for each connection (its tokens are short-lived) with the
// server's URL as audience.
func (a *Agent) credentials(ctx context.Context, hdr http.Header) error {
	if a.cfg.AgentToken != "" {
		hdr.Set(wire.AgentTokenHeader, a.cfg.AgentToken)
	}
	tok := a.cfg.IDToken
	if tok == "" && a.cfg.githubOIDC.url != "" {
		var err error
		if tok, err = a.cfg.githubOIDC.fetch(ctx, a.cfg.HTTPClient, Audience(a.cfg.Server)); err != nil {
			return err
		}
	}
	if tok != "" {
		hdr.Set(wire.IDTokenHeader, tok)
	}
	return nil
}

// Audience is the audience an agent asks its CI system's identity token
// for: the server's URL in its http form (wss://host/p is https://host/p),
// which is what the server expects unless its operator set
// --oidc-audience.
func Audience(server string) string {
	server = strings.TrimRight(server, "/")
	if rest, ok := strings.CutPrefix(server, "ws"); ok {
		return "http" + rest
	}
	return server
}

// githubOIDC is where a GitHub Actions job asks for identity tokens:
// ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN, set only for jobs with
// `permissions: id-token: write`.
type githubOIDC struct {
	url, bearer string
}

func githubOIDCFromEnv() githubOIDC {
	return githubOIDC{url: os.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), bearer: os.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")}
}

// errIDTokenRequest: GitHub did not give an identity token. Retried as
// a network failure is.
var errIDTokenRequest = errors.New("ask GitHub Actions for an identity token")

// fetch asks GitHub for an identity token for audience.
func (g githubOIDC) fetch(ctx context.Context, client *http.Client, audience string) (string, error) {
	u, err := url.Parse(g.url)
	if err != nil {
		return "", fmt.Errorf("%w: ACTIONS_ID_TOKEN_REQUEST_URL: %v", errIDTokenRequest, err)
	}
	q := u.Query()
	q.Set("audience", audience)
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errIDTokenRequest, err)
	}
	req.Header.Set("Authorization", "Bearer "+g.bearer)
	req.Header.Set("Accept", "application/json")
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errIDTokenRequest, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("%w: %v", errIDTokenRequest, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%w: %s", errIDTokenRequest, resp.Status)
	}
	var v struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.Value == "" {
		return "", fmt.Errorf("%w: the answer holds no token", errIDTokenRequest)
	}
	return v.Value, nil
}
