package e2e

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// openWebSocket is a script that opens a WebSocket to url and says
// whether it opened. (Go-quoted ASCII strings are JavaScript strings.)
func openWebSocket(url, protocol string) string {
	return `new Promise(done => {
		const ws = new WebSocket(` + strconv.Quote(url) + `, ` + strconv.Quote(protocol) + `);
		ws.onopen = () => { ws.close(); done("open"); };
		ws.onerror = () => done("error");
	})`
}

// TestBrowserOrigin: a page served by another site cannot make a real
// browser register an agent or open a client stream; a page of the server
// itself can open its WebSockets.
func TestBrowserOrigin(t *testing.T) {
	r := startServer(t)
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<!doctype html><title>another site</title><p>hello")
	}))
	t.Cleanup(elsewhere.Close)
	ctx := browser(t)

	do(t, ctx, "page elsewhere", chromedp.Navigate(elsewhere.URL+"/"))
	for _, c := range []struct{ url, protocol string }{
		{r.URL + "/agent/from-elsewhere", "converge.control.v1"},
		{r.URL + "/client/from-elsewhere", "converge.resume.v1"},
	} {
		if got := get(t, ctx, "WebSocket from elsewhere", chromedp.Evaluate[string](openWebSocket(c.url, c.protocol), chromedp.EvalAwaitPromise)); got != "error" {
			t.Errorf("a page elsewhere opening %s: %s, want error", c.url, got)
		}
	}
	resp, err := http.Get(r.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`converge_refusals_total{endpoint="agent",reason="foreign_origin"} 1`,
		`converge_refusals_total{endpoint="client",reason="foreign_origin"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	do(t, ctx, "the server's own page", chromedp.Navigate(r.HTTP+"/"), chromedp.WaitVisible(chromedp.CSS("#ci-linux")))
	if got := get(t, ctx, "WebSocket from the server's page", chromedp.Evaluate[string](openWebSocket(r.URL+"/agent/from-own-page", "converge.control.v1"), chromedp.EvalAwaitPromise)); got != "open" {
		t.Errorf("the server's own page opening /agent/from-own-page: %s, want open", got)
	}
}
