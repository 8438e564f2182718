package server

import (
	"bytes"
	"io/fs"
	"net/http"
	"strings"

	"github.com/a-h/templ"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/static"
	"github.com/converge-ci/converge/templates"
)

func (s *Server) pageRoutes() {
	s.mux.HandleFunc("GET /{$}", s.handleUsage)
	s.mux.HandleFunc("GET /downloads", s.handleDownloads)
	s.mux.HandleFunc("GET /static/{name}", s.handleStatic)
	s.mux.HandleFunc("GET /static/dist/{name}", s.handleDist)
	s.mux.HandleFunc("GET "+wire.TerminalPattern, s.handleTerminal)
	s.mux.HandleFunc("GET "+termPrefix+"{name}", s.term.serve)
	s.mux.HandleFunc("GET "+xtermPrefix+"{name}", s.term.serve)
	s.mux.HandleFunc("GET /sessions", s.handleSessions)
	s.mux.HandleFunc("GET /sessions/events", s.handleSessionEvents)
	s.mux.Handle("GET /metrics", s.metrics.handler())
}

func (s *Server) site() templates.Site {
	return templates.Site{Version: s.cfg.Version, Sessions: s.cfg.SessionsPassword != ""}
}

// bases are this server's HTTP and WebSocket base URLs as the user reached
// it, with the path prefix its routes are under: "https://host/converge".
func (s *Server) bases(r *http.Request) (base, wsBase string) {
	scheme, host := s.publicOrigin(r)
	prefix := s.publicPrefix(r)
	return scheme + "://" + host + prefix, wire.WebSocketScheme(scheme) + "://" + host + prefix
}

// handleUsage is GET /: the usage page. ?id= chooses the rendezvous ID
// filled into the recipes (a random one otherwise), so the page works
// without JavaScript.
func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	base, wsBase := s.bases(r)
	id := r.URL.Query().Get("id")
	if wire.ValidID(id) != nil {
		id = wire.NewID()
	}
	s.render(w, r, http.StatusOK, templates.Usage(templates.UsageData{
		Site: s.site(), Base: base, WSBase: wsBase,
		User: s.cfg.SSHUser, ID: id, Downloads: len(s.dist.list) > 0, Sums: s.dist.sums(),
	}))
}

// handleDownloads is GET /downloads.
func (s *Server) handleDownloads(w http.ResponseWriter, r *http.Request) {
	base, _ := s.bases(r)
	rows, missing := s.dist.views(base)
	s.render(w, r, http.StatusOK, templates.Downloads(templates.DownloadsData{
		Site: s.site(), Rows: rows, Missing: missing, Terminal: s.term.views(),
	}))
}

// handleStatic is GET /static/{name}: the short download URLs of the
// recipes (/static/agent, /static/agent.exe, …) and the page assets.
func (s *Server) handleStatic(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if dist, ok := shortName(name); ok {
		s.dist.serve(w, r, dist)
		return
	}
	if _, err := fs.Stat(static.Assets, name); err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=3600")
	http.ServeFileFS(w, r, static.Assets, name)
}

// handleDist is GET /static/dist/{name}: one downloadable binary.
func (s *Server) handleDist(w http.ResponseWriter, r *http.Request) {
	s.dist.serve(w, r, r.PathValue("name"))
}

// render writes a page, buffered so that a failure yields a clean error
// rather than half a page. Its links are under the request's public
// prefix.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, c templ.Component) {
	var buf bytes.Buffer
	if err := c.Render(templates.WithPrefix(r.Context(), s.publicPrefix(r)), &buf); err != nil {
		s.log.Error("render page", "path", r.URL.Path, "error", err)
		http.Error(w, "page failed to render; see the server log", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	if h.Get("Content-Security-Policy") == "" { // the terminal page sets its own
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
	}
	if strings.HasPrefix(r.URL.Path, "/sessions") {
		h.Set("Cache-Control", "no-store") // it lists capabilities
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
