package e2e

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// chromiumPath finds Debian's chromium. CI installs it (.ci/run), so a
// missing browser fails the test rather than skipping it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("CONVERGE_TEST_CHROMIUM"), "/usr/bin/chromium"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatal("chromium not found: install Debian's chromium package (apt-get install chromium), as .ci/run does")
	return ""
}

// browser starts a headless Chromium with a fresh profile for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox, // we run as root in CI, on a closed network
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), // small /dev/shm in containers
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser, without a deadline
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs browser steps, bounded so a stuck page fails the test saying
// what it was waiting for.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
}

// get runs one browser action that returns a value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

func text(t *testing.T, ctx context.Context, css string) string {
	t.Helper()
	return get(t, ctx, "text of "+css, chromedp.Text(chromedp.CSS(css)))
}

// TestBrowserPages drives the pages in a real browser: the usage page's
// recipes carry this server's address, and the sessions view shows an
// agent arriving and leaving without the page being reloaded.
func TestBrowserPages(t *testing.T) {
	t.Parallel()
	const password = "correct horse"
	r := startServer(t, func(c *server.Config) { c.SessionsPassword = password })
	ctx := browser(t)

	checkUsagePage(t, ctx, r)

	// The sessions view, with the credential a user would type.
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("anyone:"+password))
	do(t, ctx, "sessions page",
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			if _, err := cdp.Call(ctx, tg, network.Enable, network.EnableParams{}); err != nil {
				return err
			}
			_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": auth}})
			return err
		}),
		chromedp.Navigate(r.HTTP+"/sessions"),
		chromedp.WaitVisible(chromedp.CSS(`#live[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#agents tr.none`)),
	)
	if n := text(t, ctx, "#agent-count"); n != "0" {
		t.Errorf("agent count with no agent: %q", n)
	}
	// Mark this page load: a reload would lose the mark.
	get(t, ctx, "mark the page", chromedp.Evaluate[bool](`window.convergeTestMark = "same page"; true`))

	c := sshtest.New(t)
	// The agent lets c in, and exits when its last user logs out.
	ag := startAgent(t, r, "browser-agent", c, func(cfg *agent.Config) {
		cfg.Lifetime = lifetime.Config{ExitOnLastLogout: true, Expiry: time.Hour}
	})
	do(t, ctx, "agent appears live", chromedp.WaitVisible(chromedp.CSS(`#agents tr[data-id="browser-agent"]`)))
	row := text(t, ctx, `#agents tr[data-id="browser-agent"]`)
	host, _ := os.Hostname()
	for _, want := range []string{"browser-agent", host, "SHA256:"} {
		if !strings.Contains(row, want) {
			t.Errorf("agent row lacks %q:\n%s", want, row)
		}
	}
	if n := text(t, ctx, "#agent-count"); n != "1" {
		t.Errorf("agent count with one agent: %q", n)
	}

	// A user logs in: the row shows one user and an expiry, live.
	sshCtx, cancelSSH := context.WithCancel(context.Background())
	defer cancelSSH()
	tgt := r.target("browser-agent")
	login := c.Command(sshCtx, "ssh", tgt, tgt.Dest(), "read line || true")
	stdin, err := login.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := login.Start(); err != nil {
		t.Fatal(err)
	}
	users := `document.querySelector('#agents tr[data-id="browser-agent"] td[data-label="Users"]')`
	get(t, ctx, "one user shown", chromedp.Poll[bool](users+`?.textContent.trim() === "1"`))
	if exp := text(t, ctx, `#agents tr[data-id="browser-agent"] td[data-label="Expires"]`); !strings.Contains(exp, "UTC") {
		t.Errorf("expiry of an agent with a user: %q, want a time", exp)
	}

	// The user logs out; the agent, its last user gone, exits by itself
	// and leaves the page.
	stdin.Close()
	if err := login.Wait(); err != nil {
		t.Errorf("ssh: %v", err)
	}
	if err := ag.Wait(); err != nil {
		t.Errorf("agent after the last logout: %v, want a clean exit", err)
	}
	do(t, ctx, "agent leaves live",
		chromedp.WaitNotPresent(chromedp.CSS(`#agents tr[data-id="browser-agent"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#agents tr.none`)),
	)
	if mark := get(t, ctx, "read the mark", chromedp.Evaluate[string](`window.convergeTestMark || "reloaded"`)); mark != "same page" {
		t.Errorf("the sessions page was reloaded (mark %q); it must update in place", mark)
	}
}

// checkUsagePage submits the usage page's ID form (plain HTML, no
// script) and checks that the recipes carry r's address and that ID.
func checkUsagePage(t *testing.T, ctx context.Context, r *relay) {
	t.Helper()
	do(t, ctx, "usage page",
		chromedp.Navigate(r.HTTP+"/"),
		chromedp.WaitVisible(chromedp.CSS("#ci-linux")),
		chromedp.SetValue(chromedp.CSS("#id"), "from-form"),
		chromedp.Submit(chromedp.CSS("#id")),
		chromedp.WaitVisible(chromedp.CSS(`input[value="from-form"]`)),
	)
	linux, ssh, config := text(t, ctx, "#ci-linux"), text(t, ctx, "#ssh-cmd"), text(t, ctx, "#ssh-config-snippet")
	for _, c := range []struct{ name, got, want string }{
		{"CI download", linux, "curl -fsSL --create-dirs -o .converge/agent " + r.HTTP + "/static/agent\n"},
		{"CI run", linux, "\n.converge/agent --id from-form " + r.URL},
		{"ssh", ssh, `ssh -oProxyCommand="wsproxy ` + r.URL + `/client/from-form" -oHostKeyAlias=from-form ` + r.User + "@localhost"},
		{"ssh config", config, "ProxyCommand wsproxy " + r.URL + "/client/%n"},
	} {
		if !strings.Contains(c.got, c.want) {
			t.Errorf("%s recipe in the browser:\n%s\nwant it to contain:\n%s", c.name, c.got, c.want)
		}
	}
}
