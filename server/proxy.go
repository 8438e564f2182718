package server

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// proxies is the set of reverse proxies whose X-Forwarded-* headers are
// believed. Anyone else could forge them, so from anyone else they are
// ignored.
type proxies []netip.Prefix

// parseProxies reads --trusted-proxy values: CIDR prefixes or single
// addresses.
func parseProxies(list []string) (proxies, error) {
	var out proxies
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q is neither an IP address nor a CIDR prefix (like 10.0.0.0/8)", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// trusts reports whether host (an IP address without port) is a trusted proxy.
func (ps proxies) trusts(host string) bool {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peer is the address of the TCP peer of r, without port.
func peer(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// publicOrigin is the scheme ("http" or "https") and host[:port] users
// reach this server by: the connection's own, or what a trusted proxy
// forwarded. The host always passes validHost, so it is safe to show in
// pages and commands: a Host header that does not is replaced by the
// address the connection reached (see localHost).
func (s *Server) publicOrigin(r *http.Request) (scheme, host string) {
	scheme, host = "http", r.Host
	if !validHost(host) {
		host = localHost(r)
	}
	if r.TLS != nil {
		scheme = "https"
	}
	if !s.proxies.trusts(peer(r)) {
		return scheme, host
	}
	if p := strings.ToLower(firstValue(r.Header.Get("X-Forwarded-Proto"))); p == "http" || p == "https" {
		scheme = p
	}
	if h := firstValue(r.Header.Get("X-Forwarded-Host")); validHost(h) {
		host = h
	}
	return scheme, host
}

// localHost is the address r's connection reached, as host:port, for a
// request whose Host header cannot be shown (missing, as HTTP/1.0 allows,
// or junk). It is a real address of this server that the client could
// reach, so recipes built on it still work where the address is routable,
// and anyone can see it is not the name they typed. Without one (a handler
// not behind net/http's server) it is "converge.invalid", a name that
// cannot resolve (RFC 2606).
func localHost(r *http.Request) string {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			// Without a zone: "%" has no place in a URL's host.
			return netip.AddrPortFrom(ap.Addr().WithZone(""), ap.Port()).String()
		}
	}
	return "converge.invalid"
}

// remoteAddr is the client's address for logs and limits: the TCP peer,
// or, when that is a trusted proxy, the nearest address in
// X-Forwarded-For that is not a trusted proxy itself.
func (s *Server) remoteAddr(r *http.Request) string {
	addr := peer(r)
	if !s.proxies.trusts(addr) {
		return addr
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	// Walk from the nearest hop outwards: each trusted proxy vouches for
	// the hop before it; the first untrusted one is the client.
	for i := len(hops) - 1; i >= 0; i-- {
		h := strings.TrimSpace(hops[i])
		a, err := netip.ParseAddr(h)
		if err != nil {
			break // garbage: stop at the last address we could vouch for
		}
		addr = a.Unmap().String()
		if !s.proxies.trusts(addr) {
			break
		}
	}
	return addr
}

func firstValue(v string) string {
	v, _, _ = strings.Cut(v, ",")
	return strings.TrimSpace(v)
}

// validHost accepts host[:port] made of the characters host names, IPv4
// and bracketed IPv6 addresses use, so a forwarded value cannot inject
// markup or commands into the recipes.
func validHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-:[]_", c)) {
			return false
		}
	}
	return true
}
