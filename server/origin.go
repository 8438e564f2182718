package server

import (
	"net/http"
	"net/url"
	"strings"
)

// foreignOriginRefusal is what a refused cross-origin request is told.
const foreignOriginRefusal = "refused: this request carries the Origin of another web site. " +
	"Agents and ProxyCommand tools send no Origin header, and web pages served elsewhere " +
	"may not open connections to this server through their visitors' browsers."

// sameOrigin wraps h, an endpoint that upgrades to a WebSocket, so that a
// request from a web page served elsewhere is refused with 403 before h
// runs: before any upgrade, registration or dial request. Browsers always
// send Origin with a WebSocket handshake; agents, wsproxy and tcptows
// send none, and a page of this server sends this server's own public
// origin (publicOrigin, which honours trusted proxies), so both pass.
func (s *Server) sameOrigin(endpoint string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for _, o := range r.Header.Values("Origin") {
			if o == "" || s.ownOrigin(r, o) {
				continue
			}
			s.log.Info(endpoint+" refused", "path", r.URL.Path, "remote", s.remoteAddr(r), "origin", o, "reason", reasonForeignOrigin)
			s.metrics.refused(endpoint, reasonForeignOrigin)
			http.Error(w, foreignOriginRefusal, http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// ownOrigin reports whether origin, an Origin header of r, is the
// scheme and host users reach this server by.
func (s *Server) ownOrigin(r *http.Request, origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return false // "null", and anything that is not scheme://host[:port]
	}
	scheme, host := s.publicOrigin(r)
	return strings.EqualFold(u.Scheme, scheme) && originHost(scheme, u.Host) == originHost(scheme, host)
}

// originHost is host[:port] as origins compare it: lower case, without
// the scheme's default port.
func originHost(scheme, host string) string {
	host = strings.ToLower(host)
	if scheme == "http" {
		return strings.TrimSuffix(host, ":80")
	}
	return strings.TrimSuffix(host, ":443")
}
