package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestWebSocketOnlyProxy puts the server behind a reverse proxy that
// passes WebSockets but refuses raw stream upgrades, as some load
// balancers do. wsproxy and the agent ask for raw streams, are refused by
// the proxy, fall back to WebSockets, and the user notices nothing: a
// resumable ssh session works and survives a cut link.
func TestWebSocketOnlyProxy(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	backend, err := url.Parse(r.HTTP)
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(backend)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if leg.Requested(req) {
			refused.Add(1)
			http.Error(w, "this proxy passes only WebSockets", http.StatusBadRequest)
			return
		}
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)
	p := newProxy(t, strings.TrimPrefix(front.URL, "http://")) // to cut the user's link
	via := viaProxy(p)

	c := sshtest.New(t)
	startAgent(t, via, "ws-only", c)
	echo := startEcho(t, c, via.target("ws-only"))
	if n := p.Cut(); n == 0 {
		t.Fatal("no connection to cut")
	}
	echo.roundTrip()
	echo.finish()
	if refused.Load() < 2 {
		t.Errorf("the proxy refused %d raw stream requests; want at least wsproxy's and the agent's", refused.Load())
	}
}
