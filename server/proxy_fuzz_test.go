package server

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// FuzzForwardedHeaders: whatever the Host header says and a trusted proxy
// forwards, the origin shown in recipes is http or https with a host of
// safe characters, the path prefix is a clean path of safe characters
// ending in the base path, and the client address is an IP address (the
// peer's or one from the header).
func FuzzForwardedHeaders(f *testing.F) {
	s := &Server{cfg: Config{BasePath: "/base"}}
	var err error
	if s.proxies, err = parseProxies([]string{"10.0.0.0/8"}); err != nil {
		f.Fatal(err)
	}
	f.Add("internal:8000", "https", "relay.example.com", "203.0.113.5, 10.0.0.2", "/converge")
	f.Add("[2001:db8::9]:80", "HTTPS, http", "[2001:db8::1]:8443", "2001:db8::5", "/ci/converge/")
	f.Add(`x$(id)`, "gopher", `evil"; rm -rf ~`, "not-an-ip, 10.1.1.1", `/x"; rm -rf ~`)
	f.Add("", "", "", ",,,", "/a/../b")
	f.Add("a b<c>'d'", "http", "a.b:1", "::ffff:192.0.2.1", "//evil.example/")
	f.Add("h", "https", "h", "10.0.0.3", "/%2e%2e, /b")
	local := &net.TCPAddr{IP: net.ParseIP("10.9.9.9"), Port: 8000}
	f.Fuzz(func(t *testing.T, host, proto, fwdHost, xff, prefix string) {
		for _, peer := range []string{"10.0.0.1:1234", "192.0.2.9:1234"} {
			r := httptest.NewRequest("GET", "http://internal:8000/", nil)
			r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, net.Addr(local)))
			r.Host = host
			r.RemoteAddr = peer
			r.Header.Set("X-Forwarded-Proto", proto)
			r.Header.Set("X-Forwarded-Host", fwdHost)
			r.Header.Set("X-Forwarded-For", xff)
			r.Header.Set("X-Forwarded-Prefix", prefix)
			scheme, h := s.publicOrigin(r)
			if scheme != "http" && scheme != "https" {
				t.Fatalf("scheme %q from X-Forwarded-Proto %q", scheme, proto)
			}
			if !validHost(h) {
				t.Fatalf("host %q from Host %q, X-Forwarded-Host %q", h, host, fwdHost)
			}
			if strings.ContainsAny(h, " \"'`;$<>&|\\\n(){}!%") {
				t.Fatalf("host %q could break a shell command or markup", h)
			}
			if peer == "192.0.2.9:1234" {
				want := host
				if !validHost(host) {
					want = local.String()
				}
				if h != want {
					t.Fatalf("untrusted peer: host %q from Host %q and X-Forwarded-Host %q, want %q", h, host, fwdHost, want)
				}
			}
			p := s.publicPrefix(r)
			if !strings.HasSuffix(p, "/base") || strings.Contains(p, "//") || strings.Contains(p, "/./") || strings.Contains(p, "/../") || len(p) > maxPrefix+len("/base") {
				t.Fatalf("prefix %q from X-Forwarded-Prefix %q is not a clean path ending in the base path", p, prefix)
			}
			if strings.ContainsAny(p, " \"'`;$<>&|\\\n(){}!%?#,") {
				t.Fatalf("prefix %q could break a URL, a shell command or markup", p)
			}
			if peer == "192.0.2.9:1234" && p != "/base" {
				t.Fatalf("untrusted peer's X-Forwarded-Prefix %q was believed: %q", prefix, p)
			}
			addr := s.remoteAddr(r)
			if _, err := netip.ParseAddr(addr); err != nil {
				t.Fatalf("remote address %q (peer %s, X-Forwarded-For %q) is not an IP", addr, peer, xff)
			}
			if peer == "192.0.2.9:1234" && addr != "192.0.2.9" {
				t.Fatalf("untrusted peer's X-Forwarded-For %q was believed: %s", xff, addr)
			}
		}
	})
}
