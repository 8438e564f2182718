package server

import (
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// FuzzForwardedHeaders: whatever a trusted proxy forwards, the origin
// shown in recipes is http or https with a host of safe characters, and
// the client address is an IP address (the peer's or one from the header).
func FuzzForwardedHeaders(f *testing.F) {
	s := &Server{}
	var err error
	if s.proxies, err = parseProxies([]string{"10.0.0.0/8"}); err != nil {
		f.Fatal(err)
	}
	f.Add("https", "relay.example.com", "203.0.113.5, 10.0.0.2")
	f.Add("HTTPS, http", "[2001:db8::1]:8443", "2001:db8::5")
	f.Add("gopher", `evil"; rm -rf ~`, "not-an-ip, 10.1.1.1")
	f.Add("", "", ",,,")
	f.Add("http", "a.b:1", "::ffff:192.0.2.1")
	f.Fuzz(func(t *testing.T, proto, host, xff string) {
		for _, peer := range []string{"10.0.0.1:1234", "192.0.2.9:1234"} {
			r := httptest.NewRequest("GET", "http://internal:8000/", nil)
			r.RemoteAddr = peer
			r.Header.Set("X-Forwarded-Proto", proto)
			r.Header.Set("X-Forwarded-Host", host)
			r.Header.Set("X-Forwarded-For", xff)
			scheme, h := s.publicOrigin(r)
			if scheme != "http" && scheme != "https" {
				t.Fatalf("scheme %q from X-Forwarded-Proto %q", scheme, proto)
			}
			if h != "internal:8000" && !validHost(h) {
				t.Fatalf("host %q from X-Forwarded-Host %q", h, host)
			}
			if strings.ContainsAny(h, " \"'`;$<>&|\\\n") {
				t.Fatalf("host %q could break a shell command or markup", h)
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
