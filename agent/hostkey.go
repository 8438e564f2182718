package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"

	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/internal/wire"
)

// knownHostsLine is a line for ~/.ssh/known_hosts naming the host by alias.
func knownHostsLine(alias string, key gossh.PublicKey) string {
	return alias + " " + string(trimNewline(gossh.MarshalAuthorizedKey(key)))
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// proofKey is the host key the agent proves it holds when it registers
// (see wire.AgentKeyHeader): its ed25519 public key, or nil when the host
// key is of another type (its secret is then a bearer token).
func (a *Agent) proofKey() ed25519.PublicKey {
	if ck, ok := a.signer.PublicKey().(gossh.CryptoPublicKey); ok {
		if k, ok := ck.CryptoPublicKey().(ed25519.PublicKey); ok {
			return k
		}
	}
	return nil
}

// prove sets in hdr the agent's proof that it holds its host key, for
// the server's challenge, to register with the secret hdr carries.
func (a *Agent) prove(hdr http.Header, challenge string) error {
	sig, err := a.signer.Sign(rand.Reader, wire.ProofMessage(a.cfg.ID, challenge, hdr.Get(wire.SecretHeader)))
	if err != nil {
		return fmt.Errorf("sign the server's challenge with the host key: %w", err)
	}
	hdr.Set(wire.ChallengeHeader, challenge)
	hdr.Set(wire.ProofHeader, base64.StdEncoding.EncodeToString(sig.Blob))
	return nil
}
