package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Forwarding: a replica that gets a client (/client/ID), or an agent's
// dial-back stream, for an agent another replica holds dials that
// replica's advertise URL with the same request, one WebSocket per
// stream, and splices the two. The owner answers it as it would the
// client itself (so refusals pass through unchanged, and the agent's
// subprotocol choice comes back to be accepted with). A forwarded
// request carries forwardHeader, signed with the cluster key; the owner
// believes the client address in it (for its per-address limits) and
// never forwards it again: one hop, whatever the registry says by then.
const (
	forwardHeader = "Converge-Forwarded" // "v1 UNIX-MS CLIENT-ADDR MAC"
	forwardDomain = "converge-forward-v1"
	// forwardSkew bounds how old (or how far in the future) a forwarded
	// request's signature may be: replays are possible only that long.
	forwardSkew = 30 * time.Second
	// forwardDialTimeout bounds the handshake with the owner.
	forwardDialTimeout = 10 * time.Second

	forwardClient = "client"
	forwardStream = "stream"
)

var errForwardSignature = errors.New("forwarded request with a bad signature: do all replicas share CONVERGE_CLUSTER_KEY?")

// forwardMAC signs a forwarded request for the endpoint kind, agent id,
// stream token ("" for clients), time and client address.
func forwardMAC(key []byte, kind, id, token string, ms int64, addr string) string {
	m := hmac.New(sha256.New, key)
	for _, part := range []string{forwardDomain, kind, id, token, strconv.FormatInt(ms, 10), addr} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// forwardedFrom checks r's forwardHeader, if any: forwarded reports that
// another replica sent r, and addr is the client's address it vouches
// for. A header that does not verify is an error: the request is
// refused.
func (s *Server) forwardedFrom(r *http.Request, kind, id, token string) (addr string, forwarded bool, err error) {
	h := r.Header.Get(forwardHeader)
	if h == "" || s.cluster == nil {
		return "", false, nil
	}
	f := strings.Fields(h)
	if len(f) != 4 || f[0] != "v1" {
		return "", false, errForwardSignature
	}
	ms, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return "", false, errForwardSignature
	}
	if d := time.Since(time.UnixMilli(ms)); d > forwardSkew || d < -forwardSkew {
		return "", false, fmt.Errorf("forwarded request signed %v ago: replicas' clocks differ, or it is a replay", d.Round(time.Second))
	}
	if !hmac.Equal([]byte(f[3]), []byte(forwardMAC(s.tokens.key, kind, id, token, ms, f[2]))) {
		return "", false, errForwardSignature
	}
	return f[2], true, nil
}

// route says where a client of id goes: a local agent, another replica
// (owner), or nowhere. A forwarded request is served here or not at all.
func (s *Server) route(ctx context.Context, id string, forwarded bool) (local *agentConn, owner string) {
	if s.cluster == nil {
		return s.reg.Lookup(id), ""
	}
	local, owner = s.cluster.reg.route(ctx, id)
	if forwarded {
		owner = ""
	}
	return local, owner
}

// forwardStream forwards an agent's dial-back stream that no client here
// waits for to the replica holding the agent, which asked for it; it
// reports false, having answered nothing, when there is none to forward
// to (no cluster, a request forwarded already, or the agent is here or
// nowhere).
func (s *Server) forwardStream(w http.ResponseWriter, r *http.Request, id, token string) bool {
	if s.cluster == nil {
		return false
	}
	addr, forwarded, err := s.forwardedFrom(r, forwardStream, id, token)
	if err != nil {
		s.log.Warn("stream refused", "id", id, "remote", s.remoteAddr(r), "error", err)
		http.Error(w, err.Error(), http.StatusForbidden)
		return true
	}
	if forwarded {
		return false
	}
	_, owner := s.cluster.reg.route(r.Context(), id)
	if owner == "" {
		return false
	}
	if addr == "" {
		addr = s.remoteAddr(r)
	}
	s.forward(w, r, forwardStream, id, token, owner, addr)
	return true
}

// dial opens a forwarded request of kind to owner for id (and token),
// on behalf of the client at addr, offering protocols.
func (c *cluster) dial(owner, kind, id, token, addr string, protocols []string) (*websocket.Conn, error) {
	path := wire.ClientPath(id)
	if kind == forwardStream {
		path = wire.StreamPath(id, token)
	}
	ms := time.Now().UnixMilli()
	h := http.Header{}
	h.Set(forwardHeader, fmt.Sprintf("v1 %d %s %s", ms, addr, forwardMAC(c.s.tokens.key, kind, id, token, ms, addr)))
	ctx, cancel := context.WithTimeout(c.s.ctx, forwardDialTimeout)
	defer cancel()
	return wsconn.Dial(ctx, owner+path, wsconn.Options{Subprotocols: protocols, Header: h, HTTPClient: wsconn.DirectClient})
}

// forward relays r, a request of kind for id (and token) from the
// client at remote, to owner, the replica holding the agent.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, kind, id, token, owner, remote string) {
	endpoint := endpointClient
	if kind == forwardStream {
		endpoint = endpointAgent
	}
	log := s.log.With("id", id, "remote", remote, "owner", owner, "forward", kind)
	start := time.Now()
	up, err := s.cluster.dial(owner, kind, id, token, remote, websocketProtocols(r))
	var re *wsconn.RefusedError
	switch {
	case errors.As(err, &re): // the owner's answer, as it gave it
		log.Info("forwarded request refused by the owner", "status", re.Status, "reason", re.Message)
		http.Error(w, re.Message, re.Status)
		return
	case err != nil:
		log.Warn("cannot reach the replica holding the agent", "error", err)
		s.metrics.refused(endpoint, reasonAgentUnavailable)
		http.Error(w, fmt.Sprintf("the server holding agent %q cannot be reached; retry in a few seconds", id), http.StatusServiceUnavailable)
		return
	}
	var protocols []string
	if p := up.Subprotocol(); p != "" {
		protocols = []string{p}
	}
	c, err := wsconn.Accept(w, r, protocols...)
	if err != nil {
		up.Close(websocket.StatusGoingAway, "the client's upgrade failed")
		return
	}
	s.spliceForwarded(c, up, kind, log, start)
}

// spliceForwarded relays between c, the connection forwarded, and up,
// the owner's, until either ends.
func (s *Server) spliceForwarded(c, up *websocket.Conn, kind string, log *slog.Logger, start time.Time) {
	release, ok := s.conns.add(c)
	if !ok {
		c.Close(websocket.StatusGoingAway, "server shutting down")
		up.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer release()
	releaseUp, ok := s.conns.add(up)
	if !ok {
		up.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer releaseUp()
	s.metrics.forwarded.WithLabelValues(kind).Inc()
	s.metrics.forwardedOpen.Inc()
	defer s.metrics.forwardedOpen.Dec()
	log.Info("forwarded", "protocol", c.Subprotocol(), "setup", time.Since(start).Round(time.Microsecond))

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	res := splice.Splice(wsconn.CleanReads(websocket.NetConn(ctx, c, websocket.MessageBinary)),
		wsconn.CleanReads(websocket.NetConn(ctx, up, websocket.MessageBinary)))
	log.Info("forward ended", "duration", time.Since(start).Round(time.Millisecond),
		"bytes_in", res.AToB, "bytes_out", res.BToA, "reason", errString(res.Err))
}
