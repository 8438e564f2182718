package templates

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/a-h/templ"
)

// TestLinksUnderPrefix: every page links the server's routes under the
// prefix its rendering context carries, and at the root without one, so
// a server under a sub-path needs nothing else from the templates.
func TestLinksUnderPrefix(t *testing.T) {
	site := Site{Version: "test", Sessions: true}
	pages := map[string]func(prefix string) templ.Component{
		"usage": func(p string) templ.Component {
			return Usage(UsageData{Site: site, Base: "https://h" + p, WSBase: "wss://h" + p, User: "u", ID: "job-1"})
		},
		"downloads": func(string) templ.Component { return Downloads(DownloadsData{Site: site}) },
		"sessions": func(p string) templ.Component {
			return Sessions(SessionsData{Site: site, Events: p + "/sessions/events"})
		},
	}
	attr := regexp.MustCompile(`(?:href|src|action|data-src)="([^"]*)"`)
	for name, page := range pages {
		for _, prefix := range []string{"", "/converge", "/ci/converge"} {
			ctx := context.Background()
			if prefix != "" {
				ctx = WithPrefix(ctx, prefix)
			}
			var buf bytes.Buffer
			if err := page(prefix).Render(ctx, &buf); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			n := 0
			for _, m := range attr.FindAllStringSubmatch(buf.String(), -1) {
				l := m[1]
				if l == "" || l[0] != '/' {
					continue // absolute URLs are built from Base
				}
				n++
				if len(l) <= len(prefix) || l[:len(prefix)+1] != prefix+"/" {
					t.Errorf("%s page with prefix %q links %q", name, prefix, l)
				}
			}
			if n < 5 {
				t.Errorf("%s page with prefix %q has %d links to routes, want the frame's 5 at least", name, prefix, n)
			}
		}
	}
}
