package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/converge-ci/converge/templates"
)

// The sessions view lists every connected agent with its ID, and an ID is
// all a client needs to reach an agent's SSH server. So the view is off
// unless the operator sets a password, and then it is behind HTTP basic
// auth.

const (
	// eventWriteTimeout drops a watcher whose browser does not take an
	// update in this time, rather than letting it hold a goroutine and a
	// buffer forever.
	eventWriteTimeout = 10 * time.Second
	// eventKeepalive keeps idle event streams alive through proxies and
	// load balancers, which cut connections silent for about a minute.
	eventKeepalive = 25 * time.Second
	// maxWatchers bounds concurrent event streams.
	maxWatchers = 256
	// eventMinInterval spaces a watcher's updates: changes within it merge
	// into one, so agents churning cost each watcher at most a few renders
	// a second.
	eventMinInterval = 250 * time.Millisecond
)

// authorized checks the sessions password (any user name) and answers
// the request itself when it fails.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.SessionsPassword == "" {
		http.Error(w, "the sessions view is off on this server; its operator enables it with --sessions-password", http.StatusNotFound)
		return false
	}
	remote := s.remoteAddr(r)
	if s.authFails.blocked(remote) {
		http.Error(w, "too many wrong passwords from "+remote+"'s network, or from everyone; wait a minute", http.StatusTooManyRequests)
		return false
	}
	_, pass, ok := r.BasicAuth()
	// Compare digests: constant time, and the length of the password
	// does not show either.
	want := sha256.Sum256([]byte(s.cfg.SessionsPassword))
	got := sha256.Sum256([]byte(pass))
	if ok && subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
		return true
	}
	if ok {
		s.log.Info("sessions view: wrong password", "remote", remote)
		s.authFails.fail(remote)
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="Converge sessions", charset="UTF-8"`)
	http.Error(w, "the sessions view needs the password set with --sessions-password (any user name)", http.StatusUnauthorized)
	return false
}

// handleSessions is GET /sessions: the page.
func (s *Server) handleSessions(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	s.render(w, r, http.StatusOK, templates.Sessions(templates.SessionsData{
		Site: s.site(), Sessions: s.snapshot(r.Context()), Events: s.publicPrefix(r) + "/sessions/events",
	}))
}

// snapshot describes the connected agents for the page: this server's,
// and in a cluster every replica's, ordered by ID.
func (s *Server) snapshot(ctx context.Context) []templates.Session {
	out := s.localSessions()
	if s.cluster == nil {
		return out
	}
	out = append(out, s.cluster.remoteSessions(ctx)...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// localSessions describes the agents connected to this server.
func (s *Server) localSessions() []templates.Session {
	var out []templates.Session
	for _, a := range s.reg.Agents() {
		if !a.ready.Load() {
			continue
		}
		info := a.Info()
		v := templates.Session{
			ID: a.id, Remote: a.remote, Since: a.since,
			Hostname: info.Hostname, OS: info.OS, Arch: info.Arch, User: info.User, Dir: info.Dir,
			Fingerprint: info.Fingerprint, Expiry: info.Status.Expiry, Users: info.Status.Sessions,
			Streams: int(a.streams.Load()), Verified: a.who.Verified(),
		}
		for k, val := range info.CI {
			v.CI = append(v.CI, templates.Hint{Key: k, Value: val})
		}
		sort.Slice(v.CI, func(i, j int) bool { return v.CI[i].Key < v.CI[j].Key })
		out = append(out, v)
	}
	return out
}

// handleSessionEvents is GET /sessions/events: a server-sent event stream
// that sends the rendered table body now and after every change, as
// "agents" events. Changes that come while an update is being written
// merge into the next one. The stream ends when the server drains.
func (s *Server) handleSessionEvents(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	notices, stop, err := s.changes.watch()
	if errors.Is(err, errTooManyWatchers) {
		http.Error(w, "too many open sessions views; close some and retry", http.StatusServiceUnavailable)
		return
	}
	defer stop()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	log := s.log.With("remote", s.remoteAddr(r))
	send := func(event []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		if _, err := w.Write(event); err != nil {
			log.Debug("sessions watcher dropped", "error", err)
			return false
		}
		if err := rc.Flush(); err != nil {
			log.Debug("sessions watcher dropped", "error", err)
			return false
		}
		return true
	}
	if !send([]byte("retry: 3000\n\n")) || !send(s.agentsEvent(r.Context())) {
		return
	}
	keepalive := time.NewTicker(eventKeepalive)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case _, open := <-notices:
			if !open {
				return // draining
			}
			if !send(s.agentsEvent(r.Context())) {
				return
			}
			pause := time.NewTimer(eventMinInterval)
			select {
			case <-pause.C:
			case <-r.Context().Done():
				pause.Stop()
				return
			}
		case <-keepalive.C:
			if !send([]byte(": keepalive\n\n")) {
				return
			}
		}
	}
}

// agentsEvent renders the table body as one "agents" event.
func (s *Server) agentsEvent(ctx context.Context) []byte {
	var html bytes.Buffer
	if err := templates.SessionRows(s.snapshot(ctx)).Render(ctx, &html); err != nil {
		return []byte(fmt.Sprintf(": render failed: %v\n\n", strings.ReplaceAll(err.Error(), "\n", " ")))
	}
	var ev bytes.Buffer
	ev.WriteString("event: agents\n")
	// A carriage return ends a line in an event stream as a newline does;
	// agents' self-descriptions must not be able to start fields of their own.
	body := strings.ReplaceAll(html.String(), "\r", "")
	for _, line := range strings.Split(body, "\n") {
		ev.WriteString("data: ")
		ev.WriteString(line)
		ev.WriteString("\n")
	}
	ev.WriteString("\n")
	return ev.Bytes()
}

// verifiedJob is what the relay verified about the job of the agent
// holding id, here or at another replica; "" for none.
func (s *Server) verifiedJob(ctx context.Context, id string) string {
	if a, ok := s.reg.Lookup(id); ok && a.ready.Load() {
		return a.who.Verified()
	}
	if s.cluster == nil {
		return ""
	}
	for _, v := range s.cluster.remoteSessions(ctx) {
		if v.ID == id {
			return v.Verified
		}
	}
	return ""
}
