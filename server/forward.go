package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Forwarding: a replica that gets a client (/client/ID), or an agent's
// dial-back stream, for an agent another replica holds passes the
// request's WebSocket handshake on to that replica's advertise URL, and
// once the holder has answered 101, splices the two TCP connections (see
// tunnel.go). The WebSocket is then the client's own, end to end with the
// holder: its key, its subprotocol choice (resumable or not), its pings
// and close frames; this replica copies bytes without parsing frames. A
// refusal from the holder passes to the client unchanged. A forwarded
// request carries forwardHeader, signed with the cluster key; the holder
// believes the client address in it (for its per-address limits) and
// never forwards it again: one hop, whatever the registry says by then.
const (
	forwardHeader = "Converge-Forwarded" // "v1 UNIX-MS CLIENT-ADDR MAC"
	forwardDomain = "converge-forward-v1"
	// forwardSkew bounds how old (or how far in the future) a forwarded
	// request's signature may be: replays are possible only that long.
	forwardSkew = 30 * time.Second
	// forwardDialTimeout bounds the connection and handshake with the
	// holder.
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
	if !hmac.Equal([]byte(f[3]), []byte(forwardMAC(s.tokens.Key(), kind, id, token, ms, f[2]))) {
		return "", false, errForwardSignature
	}
	return f[2], true, nil
}

// forwardStream forwards an agent's dial-back stream that no client here
// waits for to the replica holding the agent, which asked for it; it
// reports false, having answered nothing, when there is none to forward
// to (no cluster, a request forwarded already, or the agent is here or
// nowhere).
func (s *Server) forwardStream(w http.ResponseWriter, r *http.Request, id, token string) bool {
	addr, forwarded, err := s.forwardedFrom(r, forwardStream, id, token)
	if err != nil {
		s.log.Warn("stream refused", "id", id, "remote", s.remoteAddr(r), "error", err)
		http.Error(w, err.Error(), http.StatusForbidden)
		return true
	}
	if forwarded {
		return false
	}
	_, _, owner := s.reg.Route(r.Context(), id)
	if owner == "" {
		return false
	}
	if addr == "" {
		addr = s.remoteAddr(r)
	}
	s.forward(w, r, forwardStream, id, token, owner, addr)
	return true
}
