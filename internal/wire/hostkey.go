package wire

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
)

// Host-key proof: an agent whose SSH host key is ed25519 binds its tenure
// of an ID to that key, so that its registration secret alone (a token
// seen in a log, say) is no key to the ID. It sends the public key in
// AgentKeyHeader with every registration; the server answers 401 with a
// fresh challenge in ChallengeHeader, and the agent asks again with the
// challenge and, in ProofHeader, its signature of ProofMessage. The
// server signs the agent's secrets for that key only, and tells clients
// of the ID which key holds it (HostKeyHeader). An agent without an
// ed25519 host key sends none of these, and its secret is a bearer token
// as before.
const (
	// AgentKeyHeader: the agent's ed25519 host public key, 32 bytes in
	// standard base64.
	AgentKeyHeader = "Converge-Agent-Key"
	// ChallengeHeader: the server's challenge (in a 401), sent back
	// with the proof.
	ChallengeHeader = "Converge-Agent-Challenge"
	// ProofHeader: the ed25519 signature of ProofMessage, 64 bytes in
	// standard base64.
	ProofHeader = "Converge-Agent-Proof"
	// HostKeyHeader, on the answer to a client's upgrade: the SHA256
	// fingerprint (as ssh-keygen -l prints it) of the host key that the
	// agent holding the ID proved it holds; absent when it proved none.
	// It is the relay's word: the SSH handshake checks the key end to end.
	HostKeyHeader = "Converge-Host-Key"
)

// ProofMessage is what an agent signs to register as id with challenge
// and its secret ("" for none): "converge-agent-proof-v1", id, challenge
// and secret, each followed by a zero byte.
func ProofMessage(id, challenge, secret string) []byte {
	var b []byte
	for _, part := range []string{"converge-agent-proof-v1", id, challenge, secret} {
		b = append(b, part...)
		b = append(b, 0)
	}
	return b
}

// ParseAgentKey decodes AgentKeyHeader's value.
func ParseAgentKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%s is not an ed25519 public key in base64", AgentKeyHeader)
	}
	return ed25519.PublicKey(b), nil
}

// Fingerprint is the SHA256 fingerprint of an ed25519 public key as
// OpenSSH prints it: "SHA256:" and the unpadded base64 of the hash of
// the key in SSH wire form (string "ssh-ed25519", string key).
func Fingerprint(pub ed25519.PublicKey) string {
	var b []byte
	for _, part := range [][]byte{[]byte("ssh-ed25519"), pub} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(part)))
		b = append(b, part...)
	}
	sum := sha256.Sum256(b)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}
