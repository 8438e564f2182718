package server

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

func TestCleanPrefix(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"", "", ""},
		{"/", "", ""},
		{"/converge", "/converge", ""},
		{"/converge/", "/converge", ""},
		{"/ci/converge-1.x_~", "/ci/converge-1.x_~", ""},
		{"converge", "", "start with /"},
		{"/a//b", "", "empty segment"},
		{"//", "", "empty segment"},
		{"/a/../b", "", ".."},
		{"/..", "", ".."},
		{"/./a", "", ".."},
		{"/a b", "", "character ' '"},
		{"/a%2fb", "", "character '%'"},
		{`/a"b`, "", "character"},
		{"/a?b", "", "character '?'"},
		{"/" + strings.Repeat("x", maxPrefix), "", "longer than"},
	} {
		got, err := cleanPrefix(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("cleanPrefix(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("cleanPrefix(%q) = %q, %v; want an error mentioning %q", tc.in, got, err, tc.err)
		}
	}
	if _, err := New(Config{BasePath: "/a/../b", Dist: fakeBinaries}); err == nil || !strings.Contains(err.Error(), `bad base path "/a/../b"`) {
		t.Errorf("New with base path /a/../b = %v, want a refusal naming it", err)
	}
}

// links are the href, src and action attributes of page that are paths.
func links(page string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?:href|src|action|data-src)="(/[^"]*)"`).FindAllStringSubmatch(page, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestBasePath serves under --base-path /converge with no proxy: every
// page's links, recipes and downloads are under it, and nothing else is
// served but /healthz.
func TestBasePath(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.BasePath = "/converge/"; c.Dist = fakeBinaries; c.SessionsPassword = "pw" })
	auth := http.Header{"Authorization": {"Basic OnB3"}} // ":pw"
	for _, path := range []string{"/converge/?id=job-42", "/converge/downloads", "/converge/sessions"} {
		w := serve(s, "GET", "http://relay.test:8443"+path, "192.0.2.7:1", auth)
		if w.Code != 200 {
			t.Fatalf("GET %s = %d %s", path, w.Code, w.Body)
		}
		ls := links(w.Body.String())
		if len(ls) < 3 {
			t.Errorf("GET %s: links %q, want the frame's at least", path, ls)
		}
		for _, l := range ls {
			if !strings.HasPrefix(l, "/converge/") {
				t.Errorf("GET %s: link %q is outside /converge/", path, l)
			}
			if strings.HasSuffix(l, "/events") {
				continue // a stream: TestSessionsLive follows it
			}
			if w := serve(s, "GET", "http://relay.test:8443"+l, "192.0.2.7:1", auth); w.Code != 200 {
				t.Errorf("GET %s: link %q answers %d", path, l, w.Code)
			}
		}
	}
	page := serve(s, "GET", "http://relay.test:8443/converge/?id=job-42", "192.0.2.7:1", nil).Body.String()
	for id, want := range map[string]string{
		"ci-linux":           "-o .converge/agent http://relay.test:8443/converge/static/agent\n",
		"ci-detach":          ".converge/agent --detach --id job-42 ws://relay.test:8443/converge\n",
		"ssh-cmd":            `wsproxy ws://relay.test:8443/converge/client/job-42"`,
		"ssh-config-snippet": "ProxyCommand wsproxy ws://relay.test:8443/converge/client/%n\n",
		"get-wsproxy":        "http://relay.test:8443/converge/static/wsproxy",
	} {
		if got := recipe(t, page, id); !strings.Contains(got, want) {
			t.Errorf("recipe %s = %q, want it to contain %q", id, got, want)
		}
	}
	downloads := serve(s, "GET", "http://relay.test:8443/converge/downloads", "192.0.2.7:1", nil).Body.String()
	if !strings.Contains(downloads, `href="http://relay.test:8443/converge/static/dist/agent-linux-amd64"`) {
		t.Errorf("downloads page does not link under /converge/:\n%s", downloads)
	}

	for _, tc := range []struct {
		path   string
		status int
		want   string // in the body, or the Location of a redirect
	}{
		{"/converge/static/agent", 200, "linux agent"},
		{"/converge/healthz", 200, "ok"},
		{"/healthz", 200, "ok"}, // health checks address the server directly
		{"/converge?id=x", http.StatusMovedPermanently, "/converge/?id=x"},
		{"/", 404, "serves under /converge/"},
		{"/static/agent", 404, "serves under /converge/"},
		{"/convergence/", 404, "serves under /converge/"},
		{"/client/job-42", 404, "serves under /converge/"},
	} {
		w := serve(s, "GET", tc.path, "192.0.2.7:1", nil)
		got := w.Body.String()
		if tc.status == http.StatusMovedPermanently {
			got = w.Header().Get("Location")
		}
		if w.Code != tc.status || !strings.Contains(got, tc.want) {
			t.Errorf("GET %s = %d %q, want %d with %q", tc.path, w.Code, got, tc.status, tc.want)
		}
	}
}

// TestForwardedPrefix: a trusted proxy that strips /converge says so with
// X-Forwarded-Prefix; from anyone else, or when it is not a clean path,
// the header is ignored. It adds to the base path.
func TestForwardedPrefix(t *testing.T) {
	for _, tc := range []struct {
		base, remote, prefix string
		path                 string // what the server receives
		want                 string // the public base URL in the recipes
	}{
		{"", "10.0.0.1:1", "/converge", "/", "http://relay.test/converge"},
		{"", "10.0.0.1:1", "/converge/", "/", "http://relay.test/converge"},
		{"", "10.0.0.1:1", "/ci, /other", "/", "http://relay.test/ci"},
		{"", "192.0.2.7:1", "/converge", "/", "http://relay.test"}, // not a proxy
		{"", "10.0.0.1:1", "/a/../b", "/", "http://relay.test"},
		{"", "10.0.0.1:1", `/x"><script>`, "/", "http://relay.test"},
		{"", "10.0.0.1:1", "converge", "/", "http://relay.test"},
		{"/converge", "10.0.0.1:1", "/ci", "/converge/", "http://relay.test/ci/converge"},
		{"/converge", "192.0.2.7:1", "/ci", "/converge/", "http://relay.test/converge"},
	} {
		s := newTestServer(t, func(c *Config) { c.BasePath = tc.base; c.TrustedProxies = []string{"10.0.0.0/8"} })
		hdr := http.Header{"X-Forwarded-Prefix": {tc.prefix}}
		w := serve(s, "GET", "http://relay.test"+tc.path+"?id=abc", tc.remote, hdr)
		got := recipe(t, w.Body.String(), "ci-linux")
		if !strings.Contains(got, tc.want+"/static/agent\n") {
			t.Errorf("base %q, from %s with X-Forwarded-Prefix %q: recipe %q, want base URL %s", tc.base, tc.remote, tc.prefix, got, tc.want)
		}
		_, path, _ := strings.Cut(strings.TrimPrefix(tc.want, "http://"), "/")
		if want := `href="/` + path; !strings.Contains(w.Body.String(), strings.TrimSuffix(want, "/")+`/static/style.css"`) {
			t.Errorf("base %q, from %s with X-Forwarded-Prefix %q: style sheet not linked under /%s", tc.base, tc.remote, tc.prefix, path)
		}
	}
}

// TestBasePathEndpoints: agents and clients reach their endpoints under
// the base path, a stream is relayed end to end, and the sessions view's
// event stream follows the agent.
func TestBasePathEndpoints(t *testing.T) {
	r := runServer(t, func(c *Config) { c.BasePath = "/converge"; c.SessionsPassword = "pw" })
	base := r.ws() + "/converge"
	ev := openEvents(t, r.http()+"/converge", "pw")
	a := dialAgent(t, base, "sub-1", wire.Info{Hostname: "runner"})
	ev.until(t, `data-id="sub-1"`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := wsconn.Dial(ctx, r.ws()+wire.ClientPath("sub-1"), wsconn.Options{}); err == nil {
		t.Error("a client reached the agent outside the base path")
	}
	dialed := make(chan struct{})
	go func() { defer close(dialed); a.echoStream(t, base) }()
	c, err := wsconn.Dial(ctx, base+wire.ClientPath("sub-1"), wsconn.Options{})
	<-dialed
	if err != nil {
		t.Fatalf("client under the base path: %v", err)
	}
	defer c.CloseNow()
	echoes(t, "client", c)
}
