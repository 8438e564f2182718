package server

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// An agent that sends its ed25519 host key (wire.AgentKeyHeader) proves
// it holds it before it may register: the server answers 401 with a
// challenge, and the agent asks again with its signature of
// wire.ProofMessage. The challenge is the server's own, stateless: the
// time and a MAC of it, the ID and the key with the server key, so that
// any replica checks one any other made; each is accepted once by a
// replica, for challengeTTL.
const (
	challengeDomain = "converge-challenge-v1"
	challengeTTL    = 30 * time.Second
)

// challenge is a fresh challenge for an agent registering as id with key.
func (s *Server) challenge(id string, key ed25519.PublicKey) string {
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(time.Now().UnixMilli()))
	return hex.EncodeToString(ms[:]) + s.challengeMAC(id, key, ms[:])
}

func (s *Server) challengeMAC(id string, key ed25519.PublicKey, ms []byte) string {
	m := hmac.New(sha256.New, s.tokens.Key())
	for _, part := range [][]byte{[]byte(challengeDomain), []byte(id), key, ms} {
		m.Write(part)
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// agentKey returns the host key the agent asking for id in r proved it
// holds: nil when it sent none. When it sent one without a proof, or a
// proof that fails, agentKey answers on w (401 with a challenge, 400,
// 403) and reports false.
func (s *Server) agentKey(w http.ResponseWriter, r *http.Request, id, secret string) (ed25519.PublicKey, bool) {
	h := r.Header.Get(wire.AgentKeyHeader)
	if h == "" {
		return nil, true
	}
	key, err := wire.ParseAgentKey(h)
	if err != nil {
		s.metrics.refused(endpointAgent, reasonBadRequest)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, false
	}
	proof := r.Header.Get(wire.ProofHeader)
	if proof == "" {
		w.Header().Set(wire.ChallengeHeader, s.challenge(id, key))
		http.Error(w, "prove that you hold the host key: sign the challenge", http.StatusUnauthorized)
		return nil, false
	}
	ch := r.Header.Get(wire.ChallengeHeader)
	sig, err := base64.StdEncoding.DecodeString(proof)
	if err != nil || !s.challengeValid(id, key, ch) || !ed25519.Verify(key, wire.ProofMessage(id, ch, secret), sig) {
		s.metrics.refused(endpointAgent, reasonBadRequest)
		s.log.Info("agent refused: host key not proven", "id", id, "remote", s.remoteAddr(r))
		http.Error(w, "the proof of the host key does not verify, or its challenge is stale or used; register again", http.StatusForbidden)
		return nil, false
	}
	return key, true
}

// challengeValid reports whether ch is a challenge this server's key made
// for id and key within challengeTTL, not used before here.
func (s *Server) challengeValid(id string, key ed25519.PublicKey, ch string) bool {
	b, err := hex.DecodeString(ch)
	if err != nil || len(b) != 8+16 || !hmac.Equal([]byte(ch[16:]), []byte(s.challengeMAC(id, key, b[:8]))) {
		return false
	}
	made := time.UnixMilli(int64(binary.BigEndian.Uint64(b[:8])))
	if d := time.Since(made); d < -challengeTTL || d > challengeTTL {
		return false
	}
	return s.challenges.first(ch, made.Add(challengeTTL))
}
