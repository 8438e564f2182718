package registry

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// An agent's registration secret is a token the server signs, so that the
// same server after a restart, or any replica holding the same key, checks
// an agent's claim to its ID without remembering it. A token names the
// agent's tenure of the ID and when it was signed:
//
//	bytes 0–3   tenure start, Unix seconds, big-endian
//	byte  4     tenure nonce
//	bytes 5–8   issued, Unix seconds, big-endian
//	bytes 9–15  the first 7 bytes of HMAC-SHA256(key,
//	            "converge-agent-v1" 0x00 ID 0x00 bytes 0–8 [SHA-256 of
//	            the agent's host key])
//
// The MAC covers the hash of the agent's host key when the agent proved
// it holds one (see wire.AgentKeyHeader): the token then proves nothing
// without the key, so that a token seen by others is no key to the ID.
//
// written as 32 lowercase hex digits, the syntax of the wire protocol's tokens, so
// agents of every version carry it unchanged. A 56-bit tag cannot be
// guessed online: each guess is an HTTP request. A token is valid for the
// grace period plus twice TokenRefresh after it was issued, and the server
// signs a fresh one for each connected agent every TokenRefresh: a token
// outlives its agent's link by the grace period (and a little), not for
// ever, so a token once held is no key to the ID next week.
const (
	tokenDomain = "converge-agent-v1"
	tokenMACLen = 7
	tokenLen    = 9 + tokenMACLen
	// TokenRefresh is how often a connected agent gets a fresh token.
	TokenRefresh = time.Minute
	// tokenSkew is how far in the future a token's issue time may be:
	// replicas' clocks differ a little.
	tokenSkew = time.Minute
)

// Why a token does not prove a claim.
var (
	errTokenForged  = errors.New("token not signed with this server's key for this ID")
	errTokenExpired = errors.New("token expired")
	errTokenFuture  = errors.New("token issued in the future")
)

// A Tenure is one agent's hold on an ID: it begins when the agent gets the
// ID with no proof (the ID was free, or a server forgot it), and lasts
// through every reconnection that proves it. The nonce tells apart two
// tenures begun in the same second.
type Tenure struct {
	since uint32 // Unix seconds
	nonce uint8
}

// NewTenure is a Tenure beginning now.
func NewTenure(now time.Time) Tenure {
	var b [1]byte
	rand.Read(b[:])
	return Tenure{since: unixSeconds(now), nonce: b[0]}
}

// before reports whether t began before u, in an earlier second: the
// older Tenure is the ID's first holder. Tenures begun in the same second
// are neither.
func (t Tenure) before(u Tenure) bool { return t.since < u.since }

// Tokens signs and verifies registration tokens with one key.
type Tokens struct {
	key    []byte
	maxAge time.Duration // from issue to expiry
}

// NewTokens returns the signer for key on a server that keeps IDs of
// dropped agents reserved for grace (<= 0: not at all): a token stays
// valid for the grace after its agent's link dropped, however long before
// that it was refreshed.
func NewTokens(key []byte, grace time.Duration) *Tokens {
	return &Tokens{key: key, maxAge: max(grace, 0) + 2*TokenRefresh}
}

// Sign returns the token for tenure t of id, issued at now, for an agent
// that proved no host key.
func (k *Tokens) Sign(id string, t Tenure, now time.Time) string { return k.SignBound(id, t, now, nil) }

// Verify returns the proven claim token makes on id at now for an agent
// that proved no host key (see VerifyBound).
func (k *Tokens) Verify(id, token string, now time.Time) (Claim, error) {
	return k.VerifyBound(id, token, now, nil)
}

// SignBound returns the token for tenure t of id, issued at now, bound to
// hostKey, the public key the agent proved it holds (nil: none).
func (k *Tokens) SignBound(id string, t Tenure, now time.Time, hostKey []byte) string {
	var b [tokenLen]byte
	binary.BigEndian.PutUint32(b[0:4], t.since)
	b[4] = t.nonce
	binary.BigEndian.PutUint32(b[5:9], unixSeconds(now))
	copy(b[9:], k.mac(id, b[:9], hostKey))
	return hex.EncodeToString(b[:])
}

// VerifyBound returns the proven claim token makes on id at now, from an
// agent that proved it holds hostKey (nil: none). The tag is compared in
// constant time; the error says why a token proves nothing: malformed,
// errTokenForged (another key, ID or host key, or altered),
// errTokenExpired or errTokenFuture.
func (k *Tokens) VerifyBound(id, token string, now time.Time, hostKey []byte) (Claim, error) {
	b, err := hex.DecodeString(token)
	if err != nil || len(b) != tokenLen || hex.EncodeToString(b) != token {
		return Claim{}, fmt.Errorf("token is not %d bytes of lowercase hex", tokenLen)
	}
	if !hmac.Equal(b[9:], k.mac(id, b[:9], hostKey)) {
		return Claim{}, errTokenForged
	}
	c := Claim{
		Tenure: Tenure{since: binary.BigEndian.Uint32(b[0:4]), nonce: b[4]},
		Issued: binary.BigEndian.Uint32(b[5:9]),
		Proven: true,
	}
	issued := time.Unix(int64(c.Issued), 0)
	switch {
	case issued.After(now.Add(tokenSkew)) || c.Tenure.since > c.Issued:
		return Claim{}, errTokenFuture
	case now.Sub(issued) > k.maxAge:
		return Claim{}, fmt.Errorf("%w: issued %v ago, valid for %v", errTokenExpired, now.Sub(issued).Round(time.Second), k.maxAge)
	}
	return c, nil
}

func (k *Tokens) mac(id string, body, hostKey []byte) []byte {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(tokenDomain))
	m.Write([]byte{0})
	m.Write([]byte(id))
	m.Write([]byte{0})
	m.Write(body)
	if len(hostKey) > 0 {
		sum := sha256.Sum256(hostKey)
		m.Write(sum[:])
	}
	return m.Sum(nil)[:tokenMACLen]
}

// unixSeconds is t as unsigned 32-bit Unix seconds (good until 2106).
func unixSeconds(t time.Time) uint32 { return uint32(t.Unix()) }

// Key is the key k signs with, which signs forwarded requests too.
func (k *Tokens) Key() []byte { return k.key }
