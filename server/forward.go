package server

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
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
// Each signature is accepted once (see seenMACs): a replica signs each
// request with a millisecond of its own, and a holder refuses a
// signature it has seen within the window.
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

// peers are the other replicas a request may come from, or be forwarded
// to: none for a single server (alone), the cluster's otherwise. The
// handlers ask them, and never whether a cluster is configured.
type peers interface {
	// forwardedFrom checks r's forwardHeader, if any: forwarded reports
	// that another replica sent r, and addr is the client's address it
	// vouches for. A header that does not verify is an error: the
	// request is refused. A single server believes no such header, and
	// ignores it.
	forwardedFrom(r *http.Request, kind, id, token string) (addr string, forwarded bool, err error)
	// dialOwner sends r's handshake, as a request of kind for id (and
	// token) on behalf of the client at addr, to owner, the replica
	// holding the agent, and reads the answer (see cluster.dialOwner).
	dialOwner(ctx context.Context, r *http.Request, owner, kind, id, token, addr string) (net.Conn, *bufio.Reader, *http.Response, error)
}

// alone is the peers of a single server: none.
type alone struct{}

func (alone) forwardedFrom(*http.Request, string, string, string) (string, bool, error) {
	return "", false, nil
}

func (alone) dialOwner(context.Context, *http.Request, string, string, string, string, string) (net.Conn, *bufio.Reader, *http.Response, error) {
	return nil, nil, nil, errors.New("a single server has no other replica to forward to")
}

func (c *cluster) forwardedFrom(r *http.Request, kind, id, token string) (addr string, forwarded bool, err error) {
	h := r.Header.Get(forwardHeader)
	if h == "" {
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
	if !hmac.Equal([]byte(f[3]), []byte(forwardMAC(c.s.tokens.Key(), kind, id, token, ms, f[2]))) {
		return "", false, errForwardSignature
	}
	if !c.seen.first(f[3], time.UnixMilli(ms).Add(forwardSkew)) {
		return "", false, errors.New("forwarded request replayed: its signature was used already")
	}
	return f[2], true, nil
}

// seenMACs are the signatures of forwarded requests accepted within the
// window, so that each is accepted once. The window bounds how many
// there are; past maxSeenMACs (more than 8,000 forwarded requests a
// second), the oldest are forgotten early.
type seenMACs struct {
	mu    sync.Mutex
	until map[string]time.Time // signature -> end of its window
	fifo  []string             // in the order accepted
}

const maxSeenMACs = 1 << 19

// first records mac, valid until until, and reports whether it is new.
func (s *seenMACs) first(mac string, until time.Time) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.until == nil {
		s.until = make(map[string]time.Time)
	}
	for len(s.fifo) > 0 && (len(s.fifo) >= maxSeenMACs || now.After(s.until[s.fifo[0]])) {
		delete(s.until, s.fifo[0])
		s.fifo = s.fifo[1:]
	}
	if _, ok := s.until[mac]; ok {
		return false
	}
	s.until[mac] = until
	s.fifo = append(s.fifo, mac)
	return true
}

// signMS is the time a forwarded request is signed with: now in Unix
// milliseconds, or one more than the last, so that no two requests this
// replica signs share one (seenMACs would refuse the second).
func (c *cluster) signMS() int64 {
	for {
		last, now := c.lastMS.Load(), time.Now().UnixMilli()
		ms := max(now, last+1)
		if c.lastMS.CompareAndSwap(last, ms) {
			return ms
		}
	}
}

// forwardStream forwards an agent's dial-back stream that no client here
// waits for to the replica holding the agent, which asked for it; it
// reports false, having answered nothing, when there is none to forward
// to (no cluster, a request forwarded already, or the agent is here or
// nowhere).
func (s *Server) forwardStream(w http.ResponseWriter, r *http.Request, id, token string) bool {
	addr, forwarded, err := s.peers.forwardedFrom(r, forwardStream, id, token)
	if err != nil {
		s.log.Warn("stream refused", "id", id, "remote", s.remoteAddr(r), "error", err)
		http.Error(w, err.Error(), http.StatusForbidden)
		return true
	}
	if forwarded {
		return false
	}
	_, _, owner, _ := s.reg.Route(r.Context(), id) // Redis unavailable: served here, if at all
	if owner == "" {
		return false
	}
	if addr == "" {
		addr = s.remoteAddr(r)
	}
	s.forward(w, r, forwardStream, id, token, owner, addr)
	return true
}
