package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestBrowserListsAttachesDetaches: a shell started over OpenSSH shows in
// the browser terminal's Shells list, with who is attached; its Attach
// button joins it (its screen shows, what the browser types reaches it);
// Detach leaves it running, and the list comes back.
func TestBrowserListsAttachesDetaches(t *testing.T) {
	t.Parallel()
	r := startServer(t, withTerminal)
	owner := sshtest.New(t)
	a := startAgent(t, r, "browser-shells", owner, func(cfg *agent.Config) {
		cfg.Shell, cfg.Executable = "bash", bin("agent")
	})
	tm := startTerm(t, owner, r.target("browser-shells"), 100, 30)
	tm.typeLine("echo kept-$((6*7))")
	tm.waitScreen("kept-42")

	p := newTermPage(t)
	p.open(browserLink(t, a, r, "browser-shells", r.HTTP))
	p.login(a.Dir)
	p.waitScreen("This is shell 2") // the browser's own, kept by now
	do(t, p.ctx, "list the shells", chromedp.Click(chromedp.CSS("#shells-btn")))
	row := `#shells-list tr[data-shell="1"]`
	p.waitJS("both shells listed", `document.querySelector('#shells-list tr[data-shell="2"]') !== null && document.querySelector('`+row+`') !== null`, 30*time.Second)
	if got := p.text(row); !strings.Contains(got, "100x30") || strings.Contains(got, "nobody") {
		t.Errorf("the owner's shell is listed as %q; want its size 100x30 and its owner attached", got)
	}

	do(t, p.ctx, "attach", chromedp.Click(chromedp.CSS(row+" button")))
	p.waitScreen("kept-42")
	tm.waitScreen("joined shell 1")
	p.waitState("open")
	p.typeLine("echo from-browser-$((1+1))")
	tm.waitScreen("from-browser-2")

	do(t, p.ctx, "detach", chromedp.Click(chromedp.CSS("#detach")))
	p.waitScreen("Detached: the shell keeps running")
	tm.waitScreen("detached")
	p.waitJS("the list after detach", `!document.getElementById("shells").hidden && document.querySelector('`+row+`') !== null`, 30*time.Second)
	if h := get(t, p.ctx, "fragment", chromedp.Evaluate[string](`location.hash`)); strings.Contains(h, "attach") {
		t.Errorf("after detach the fragment still attaches: %q", h)
	}
	tm.typeLine("echo still-$((2+3))")
	tm.waitScreen("still-5")
	if v := p.cspViolations(); len(v) > 0 {
		t.Errorf("the page broke its CSP: %q", v)
	}
}
