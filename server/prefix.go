package server

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Serving under a sub-path (https://example.com/converge/). Two settings
// put the server's URLs under a path prefix, each for one kind of proxy,
// and they compose:
//
//   - Config.BasePath (--base-path /converge): the server serves under the
//     prefix itself and strips it from incoming paths, so a proxy that
//     passes paths through unchanged works, and so does no proxy at all.
//   - X-Forwarded-Prefix: /converge, believed only from a trusted proxy:
//     the prefix that proxy stripped before forwarding (nginx's
//     `proxy_pass http://upstream/;` in a `location /converge/` block),
//     which the server never sees in paths and must be told.
//
// The public URL of a route is scheme://host + forwarded prefix + base
// path + route: each layer that strips a part of the path contributes it
// back. All routes are registered on the mux without any prefix; one
// wrapper (underBasePath) strips the base path in front of the mux, so a
// new route is served under it for free. Pages build their links with the
// public prefix (see templates.WithPrefix).

// maxPrefix bounds a base path or forwarded prefix, in bytes.
const maxPrefix = 200

// cleanPrefix checks p as a path prefix and returns it in its one form:
// "" for none, else "/seg[/seg...]" without a trailing slash. Segments
// are made of letters, digits and "-._~", and are not "." or "..": a
// prefix is shown in shell commands and HTML, and is compared with
// request paths as it is, so it must need no escaping and no cleaning.
// Its errors complete "bad path prefix %q: ".
func cleanPrefix(p string) (string, error) {
	if p == "" || p == "/" {
		return "", nil
	}
	if !strings.HasPrefix(p, "/") {
		return "", errors.New("it must start with /, like /converge")
	}
	if len(p) > maxPrefix {
		return "", fmt.Errorf("it is longer than %d bytes", maxPrefix)
	}
	p = strings.TrimSuffix(p, "/")
	for _, seg := range strings.Split(p[1:], "/") {
		switch seg {
		case "":
			return "", errors.New("it has an empty segment (//)")
		case ".", "..":
			return "", errors.New("it has a . or .. segment")
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-._~", c)) {
				return "", fmt.Errorf("it has the character %q; use letters, digits and -._~ between slashes", c)
			}
		}
	}
	return p, nil
}

// publicPrefix is the path prefix users reach this server's routes by:
// what a trusted proxy says it stripped (X-Forwarded-Prefix, when it is a
// valid prefix; otherwise ignored), then the base path.
func (s *Server) publicPrefix(r *http.Request) string {
	fwd := ""
	if s.proxies.trusts(peer(r)) {
		if p, err := cleanPrefix(firstValue(r.Header.Get("X-Forwarded-Prefix"))); err == nil {
			fwd = p
		}
	}
	return fwd + s.cfg.BasePath
}

// underBasePath serves h under the base path: a request for a path under
// it reaches h with the base path stripped; the base path itself is
// redirected to its slashed form, where the usage page is. Outside it only
// /healthz answers, for health checks that address the server directly;
// everything else is 404 with a message naming the base path.
func (s *Server) underBasePath(h http.Handler) http.Handler {
	base := s.cfg.BasePath
	if base == "" {
		return h
	}
	inside := http.StripPrefix(base, h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case strings.HasPrefix(p, base+"/"):
			inside.ServeHTTP(w, r)
		case p == base:
			to := s.publicPrefix(r) + "/"
			if r.URL.RawQuery != "" {
				to += "?" + r.URL.RawQuery
			}
			http.Redirect(w, r, to, http.StatusMovedPermanently)
		case p == "/healthz":
			h.ServeHTTP(w, r)
		default:
			http.Error(w, "not found: this server serves under "+base+"/", http.StatusNotFound)
		}
	})
}
