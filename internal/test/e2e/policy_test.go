package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/issuertest"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wire"
)

// The registration policy tests run the converge, agent and wsproxy
// binaries with real OpenSSH, and an OIDC issuer on 127.0.0.1
// (issuertest) in place of GitHub's or GitLab's.

// refusedAgent runs the agent binary against r with env and returns its
// exit status and output once it has exited by itself.
func refusedAgent(t *testing.T, r *relay, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin("agent"), append(append([]string{"--authorized-keys-data", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb1mzJ3QwAHt6cDhxZ7mJzC+e8o0d7xEWbZ3GXuB2cW x"}, args...), r.URL)...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the agent did not stop by itself:\n%s", out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return code, string(out)
}

// fetchPage returns the body of url, with basic auth password pw when set.
func fetchPage(t *testing.T, url, pw string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if pw != "" {
		req.SetBasicAuth("x", pw)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// githubTokenService stands in for GitHub Actions' token endpoint
// (ACTIONS_ID_TOKEN_REQUEST_URL): for the right bearer it returns a
// token of is for repo, with the audience the agent asked for.
func githubTokenService(t *testing.T, is *issuertest.Issuer, repo, bearer string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+bearer {
			http.Error(w, "bad bearer", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"value": is.Sign(is.GitHub(repo, r.URL.Query().Get("audience")))})
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/token?api-version=2.0"
}

// noSecrets fails t when any secret appears in what the server wrote:
// its logs, its metrics, its sessions page.
func noSecrets(t *testing.T, places map[string]string, secrets ...string) {
	t.Helper()
	for name, text := range places {
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("a credential appears in the server's %s", name)
			}
		}
	}
}

func TestPolicyOIDC(t *testing.T) {
	is := issuertest.Start(t)
	untrusted := issuertest.Start(t)
	sp := startServerProcEnv(t, []string{"CONVERGE_SESSIONS_PASSWORD=pw"},
		"--oidc-issuer", is.URL, "--oidc-allow", "repository=acme/*")
	r := &relay{URL: "ws://" + sp.addr, HTTP: "http://" + sp.addr, User: "ciuser", Addr: sp.addr}
	aud := "http://" + sp.addr // the server's URL, as the agent reaches it

	expired := is.GitHub("acme/app", aud)
	expired["exp"] = time.Now().Add(-time.Minute).Unix()
	refused := []struct{ name, token, want string }{
		{"none", "", "admits only agents with an identity token"},
		{"expired", is.Sign(expired), "expired"},
		{"other audience", is.Sign(is.GitHub("acme/app", "https://other.example")), "audience"},
		{"alg none", issuertest.Unsigned(is.GitHub("acme/app", aud)), "signature algorithm"},
		{"repository fails the rules", is.Sign(is.GitHub("evil/app", aud)), "evil/app is not allowed"},
		{"untrusted issuer", untrusted.Sign(untrusted.GitHub("acme/app", aud)), "not one this relay trusts"},
	}
	var tokens []string
	for _, c := range refused {
		var env []string
		if c.token != "" {
			env = []string{"CONVERGE_ID_TOKEN=" + c.token}
			tokens = append(tokens, c.token)
		}
		code, out := refusedAgent(t, r, env)
		if code != 4 || !strings.Contains(out, c.want) || !strings.Contains(out, "does not admit") {
			t.Errorf("%s: exit %d, want 4 with %q; output:\n%s", c.name, code, c.want, out)
		}
	}
	// One refusal per agent: none retried.
	if got := metric(t, r.HTTP, `converge_refusals_total{endpoint="agent",reason="oidc"}`); got != float64(len(refused)) {
		t.Errorf("oidc refusals counted: %v, want %d (one per agent: none may retry)", got, len(refused))
	}

	// A job on GitHub Actions: the agent asks for its token itself.
	c := sshtest.New(t)
	dir := keyDir(t, c)
	ghaBearer := "gha-bearer-" + strings.Repeat("b", 20)
	a := runAgentBinary(t, r, dir, []string{"ACTIONS_ID_TOKEN_REQUEST_URL=" + githubTokenService(t, is, "acme/app", ghaBearer),
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN=" + ghaBearer}, "--id", "myjob", "--stay")
	trustPrinted(t, c, "myjob", a.Out.String())
	res := c.SSH(r.target("myjob"), 0, "echo in")
	wantLine := "converge: myjob is 127.0.0.1:" // the test issuer's host stands for github.com
	if !strings.Contains(res.Stderr, wantLine) || !strings.Contains(res.Stderr, "/acme/app, workflow CI, refs/heads/main, run 123 attempt 1, by alice (verified by the relay") {
		t.Errorf("wsproxy's line is missing; ssh's stderr:\n%s", res.Stderr)
	}
	page := fetchPage(t, r.HTTP+"/sessions", "pw")
	if !strings.Contains(page, "/acme/app, workflow CI, refs/heads/main, run 123 attempt 1, by alice") {
		t.Errorf("the sessions page lacks the verified job:\n%s", page)
	}
	term := fetchPage(t, r.HTTP+"/terminal/myjob", "")
	if !strings.Contains(term, "/acme/app, workflow CI, refs/heads/main, run 123 attempt 1, by alice") || !strings.Contains(term, "verified by this relay") {
		t.Errorf("the terminal page lacks the verified job:\n%s", term)
	}
	metrics := fetchPage(t, r.HTTP+"/metrics", "")
	if !strings.Contains(metrics, `converge_agent_admissions_total{via="oidc"} 1`) {
		t.Errorf("admissions not counted")
	}
	noSecrets(t, map[string]string{"logs": sp.logs.String(), "metrics": metrics, "sessions page": page, "terminal page": term}, append(tokens, ghaBearer)...)
}

func TestPolicyToken(t *testing.T) {
	good := "ops-token-" + strings.Repeat("7", 24)
	file := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(file, []byte("# the ops team's\n"+good+"\n"), 0o600)
	fromEnv := "env-token-" + strings.Repeat("e", 24)
	sp := startServerProcEnv(t, []string{"CONVERGE_AGENT_TOKENS=" + fromEnv + ", another-token-0123456789"}, "--agent-token-file", file)
	r := &relay{URL: "ws://" + sp.addr, HTTP: "http://" + sp.addr, User: "ciuser", Addr: sp.addr}

	wrong := "not-the-token-" + strings.Repeat("x", 20)
	for _, env := range [][]string{nil, {"CONVERGE_AGENT_TOKEN=" + wrong}} {
		code, out := refusedAgent(t, r, env)
		if code != 4 || !strings.Contains(out, "token") || !strings.Contains(out, "does not admit") {
			t.Errorf("agent with %v: exit %d, want 4; output:\n%s", env, code, out)
		}
	}
	// In the background (--detach) the refusal's status reaches the job too.
	if code, out := refusedAgent(t, r, []string{"CONVERGE_AGENT_TOKEN=" + wrong}, "--detach"); code != 4 || !strings.Contains(out, "does not admit") {
		t.Errorf("agent --detach with a wrong token: exit %d, want 4; output:\n%s", code, out)
	}
	if got := metric(t, r.HTTP, `converge_refusals_total{endpoint="agent",reason="agent_token"}`); got != 3 {
		t.Errorf("agent_token refusals counted: %v, want 3", got)
	}
	c := sshtest.New(t)
	a := runAgentBinary(t, r, keyDir(t, c), []string{"CONVERGE_AGENT_TOKEN=" + good}, "--id", "tokjob", "--stay")
	trustPrinted(t, c, "tokjob", a.Out.String())
	res := c.SSH(r.target("tokjob"), 0, "echo in")
	if strings.Contains(res.Stderr, "verified by the relay") {
		t.Errorf("a shared token verifies no job, yet wsproxy says:\n%s", res.Stderr)
	}
	runAgentBinary(t, r, keyDir(t, c), []string{"CONVERGE_AGENT_TOKEN=" + fromEnv}, "--id", "envjob", "--stay")
	if got := metric(t, r.HTTP, `converge_agent_admissions_total{via="token"}`); got != 2 {
		t.Errorf("token admissions: %v, want 2", got)
	}
	noSecrets(t, map[string]string{"logs": sp.logs.String(), "metrics": fetchPage(t, r.HTTP+"/metrics", "")}, good, wrong, fromEnv)
}

// TestPolicyOpen: the default admits any agent, and counts it so.
func TestPolicyOpen(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "openjob", c)
	c.SSH(r.target("openjob"), 0, "true")
	if got := metric(t, r.HTTP, `converge_agent_admissions_total{via="open"}`); got != 1 {
		t.Errorf("open admissions: %v, want 1", got)
	}
}

// upgradeStatus asks r to register id as an agent presenting idToken and
// returns the status and body of the answer (the connection is dropped
// if it switched).
func upgradeStatus(t *testing.T, r *relay, id, idToken string) (int, string) {
	t.Helper()
	resp := upgrade(t, r.HTTP+wire.AgentPath(id), wire.ControlProtocol, http.Header{wire.IDTokenHeader: {idToken}})
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode, string(b)
}

// upgrade sends a WebSocket handshake for url, offering protocol, with
// hdr, and returns the answer; the caller closes its body (and so the
// connection).
func upgrade(t *testing.T, url, protocol string, hdr http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Protocol", protocol)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestPolicyRepoCapAcrossReplicas: --max-agents-per-repo 2 holds for
// agents of one repository spread over three replicas sharing Redis.
func TestPolicyRepoCapAcrossReplicas(t *testing.T) {
	is := issuertest.Start(t)
	rig := newClusterRig(t, 0, false)
	rig.extra = []string{"--oidc-issuer", is.URL, "--oidc-allow", "repository=acme/*",
		"--oidc-audience", "converge-test", "--max-agents-per-repo", "2"}
	for range 3 {
		rig.reps = append(rig.reps, rig.startReplica(""))
	}
	token := func(repo string) string { return is.Sign(is.GitHub(repo, "converge-test")) }
	var agents []*agentProc
	for i := range 2 {
		agents = append(agents, runAgentBinary(t, rig.relay(i), keyDir(t, nil), []string{"CONVERGE_ID_TOKEN=" + token("acme/app")},
			"--id", fmt.Sprintf("cap%d", i), "--authorized-keys-data", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb1mzJ3QwAHt6cDhxZ7mJzC+e8o0d7xEWbZ3GXuB2cW x"))
	}
	// A client of cap1 at replica 0 is forwarded to replica 1, and still
	// learns what replica 1 verified.
	resp := upgrade(t, rig.relay(0).HTTP+wire.ClientPath("cap1"), "", nil)
	resp.Body.Close()
	if v := resp.Header.Get(wire.VerifiedHeader); resp.StatusCode != http.StatusSwitchingProtocols || !strings.Contains(v, "/acme/app, workflow CI") {
		t.Errorf("forwarded client: %s, %s %q", resp.Status, wire.VerifiedHeader, v)
	}
	third := rig.relay(2)
	code, body := upgradeStatus(t, third, "third", token("acme/app"))
	if code != http.StatusTooManyRequests || !strings.Contains(body, "acme/app already has 2 agents") {
		t.Fatalf("a third agent of acme/app: %d %q, want 429", code, body)
	}
	if got := metric(t, third.HTTP, `converge_refusals_total{endpoint="agent",reason="repo_limit"}`); got != 1 {
		t.Errorf("repo_limit refusals on the third replica: %v, want 1", got)
	}
	// Another repository is counted apart.
	if code, body := upgradeStatus(t, third, "other", token("acme/other")); code != http.StatusSwitchingProtocols {
		t.Errorf("an agent of acme/other: %d %q, want 101", code, body)
	}
	// Once one of acme/app's agents has gone, the third gets its place.
	agents[0].cmd.Process.Kill()
	<-agents[0].done
	waitFor(t, "acme/app's count to drop", func() bool {
		code, _ := upgradeStatus(t, third, "third", token("acme/app"))
		return code == http.StatusSwitchingProtocols
	})
}

// TestPolicyReconnectPastExpiry: an agent given CONVERGE_ID_TOKEN keeps
// presenting it; after it expired, a restarted relay still lets the agent
// back, since the agent proves it held its ID (its welcome's secret).
func TestPolicyReconnectPastExpiry(t *testing.T) {
	is := issuertest.Start(t)
	args := []string{"--state-dir", t.TempDir(), "--oidc-issuer", is.URL, "--oidc-allow", "repository=acme/*", "--oidc-audience", "converge-test"}
	sp := startServerProc(t, args...)
	r := &relay{URL: "ws://" + sp.addr, HTTP: "http://" + sp.addr, User: "ciuser", Addr: sp.addr}
	claims := is.GitHub("acme/app", "converge-test")
	exp := time.Now().Add(5 * time.Second)
	claims["exp"] = exp.Unix()
	a := runAgentBinary(t, r, keyDir(t, nil), []string{"CONVERGE_ID_TOKEN=" + is.Sign(claims)},
		"--id", "late", "--stay", "--authorized-keys-data", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb1mzJ3QwAHt6cDhxZ7mJzC+e8o0d7xEWbZ3GXuB2cW x")
	waitFor(t, "the token to expire", func() bool { return time.Now().After(exp.Add(time.Second)) })
	sp.kill()
	sp = startServerProc(t, append(args, "--addr", sp.addr)...)
	waitFor(t, "the agent to reconnect", func() bool {
		if !a.running() {
			t.Fatalf("the agent stopped (exit %d):\n%s", a.code, a.All)
		}
		return strings.Contains(a.All.String(), "reconnected to server")
	})
	if got := metric(t, r.HTTP, `converge_agent_admissions_total{via="oidc"}`); got != 1 {
		t.Errorf("admissions on the restarted relay: %v, want 1", got)
	}
	// A new agent with the same expired token is refused.
	if code, out := refusedAgent(t, r, []string{"CONVERGE_ID_TOKEN=" + is.Sign(claims)}); code != 4 || !strings.Contains(out, "expired") {
		t.Errorf("a new agent with the expired token: exit %d, want 4; output:\n%s", code, out)
	}
}
