package server

import (
	"net"
	"net/http"

	"github.com/converge-ci/converge/templates"
)

func (s *Server) pageRoutes() {
	s.mux.HandleFunc("GET /{$}", s.handleUsage)
}

func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	scheme, host := s.publicOrigin(r)
	ws := "ws"
	if scheme == "https" {
		ws = "wss"
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	templates.Usage(scheme+"://"+host, ws+"://"+host, s.cfg.SSHUser).Render(r.Context(), w)
}

// publicOrigin is the scheme and host users reach this server by.
func (s *Server) publicOrigin(r *http.Request) (scheme, host string) {
	scheme = "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme, r.Host
}

// remoteAddr is the client's address for logs and limits.
func (s *Server) remoteAddr(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}
