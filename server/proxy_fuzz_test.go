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
// safe characters, and the client address is an IP address (the peer's or
// one from the header).
func FuzzForwardedHeaders(f *testing.F) {
	s := &Server{}
	var err error
	if s.proxies, err = parseProxies([]string{"10.0.0.0/8"}); err != nil {
		f.Fatal(err)
	}
	f.Add("internal:8000", "https", "relay.example.com", "203.0.113.5, 10.0.0.2")
	f.Add("[2001:db8::9]:80", "HTTPS, http", "[2001:db8::1]:8443", "2001:db8::5")
	f.Add(`x$(id)`, "gopher", `evil"; rm -rf ~`, "not-an-ip, 10.1.1.1")
	f.Add("", "", "", ",,,")
	f.Add("a b<c>'d'", "http", "a.b:1", "::ffff:192.0.2.1")
	local := &net.TCPAddr{IP: net.ParseIP("10.9.9.9"), Port: 8000}
	f.Fuzz(func(t *testing.T, host, proto, fwdHost, xff string) {
		for _, peer := range []string{"10.0.0.1:1234", "192.0.2.9:1234"} {
			r := httptest.NewRequest("GET", "http://internal:8000/", nil)
			r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, net.Addr(local)))
			r.Host = host
			r.RemoteAddr = peer
			r.Header.Set("X-Forwarded-Proto", proto)
			r.Header.Set("X-Forwarded-Host", fwdHost)
			r.Header.Set("X-Forwarded-For", xff)
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
