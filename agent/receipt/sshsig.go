package receipt

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// Namespace is the SSHSIG namespace of receipts: a signature made for a
// receipt cannot pass as one for a git commit or a file (ssh-keygen -Y
// verify checks it, -n converge-receipt@converge).
const Namespace = "converge-receipt@converge"

// sshsigMagic opens a signature and the data it signs (PROTOCOL.sshsig).
const sshsigMagic = "SSHSIG"

// Sign signs message in OpenSSH's SSHSIG format (PROTOCOL.sshsig, what
// `ssh-keygen -Y sign` writes) with signer for namespace, hashing with
// SHA-512, and returns the armored signature. RSA keys sign with
// rsa-sha2-512, as ssh-keygen requires. x/crypto/ssh has no writer of
// this format; it is small enough to write here, and every change is
// checked by the real ssh-keygen in the tests.
func Sign(signer gossh.Signer, namespace string, message []byte) ([]byte, error) {
	if namespace == "" {
		return nil, errors.New("sshsig: empty namespace")
	}
	h := sha512.Sum512(message)
	toSign := gossh.Marshal(struct {
		Namespace, Reserved, Hash, Digest string
	}{namespace, "", "sha512", string(h[:])})
	toSign = append([]byte(sshsigMagic), toSign...)

	var sig *gossh.Signature
	var err error
	if as, ok := signer.(gossh.AlgorithmSigner); ok && signer.PublicKey().Type() == gossh.KeyAlgoRSA {
		sig, err = as.SignWithAlgorithm(rand.Reader, toSign, gossh.KeyAlgoRSASHA512)
	} else {
		sig, err = signer.Sign(rand.Reader, toSign)
	}
	if err != nil {
		return nil, fmt.Errorf("sshsig: sign: %w", err)
	}
	blob := gossh.Marshal(struct {
		Version                              uint32
		PublicKey, Namespace, Reserved, Hash string
		Signature                            string
	}{1, string(signer.PublicKey().Marshal()), namespace, "", "sha512", string(gossh.Marshal(sig))})
	blob = append([]byte(sshsigMagic), blob...)
	return armor(blob), nil
}

// armor wraps blob as ssh-keygen does: base64 in lines of 70 between
// BEGIN and END lines.
func armor(blob []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(blob)
	var b strings.Builder
	b.WriteString("-----BEGIN SSH SIGNATURE-----\n")
	for len(enc) > 70 {
		b.WriteString(enc[:70] + "\n")
		enc = enc[70:]
	}
	b.WriteString(enc + "\n-----END SSH SIGNATURE-----\n")
	return []byte(b.String())
}

// AllowedSigners is the line of an allowed_signers file (ssh-keygen(1),
// ALLOWED SIGNERS) that accepts key's receipts under principal.
func AllowedSigners(principal string, key gossh.PublicKey) string {
	return fmt.Sprintf("%s namespaces=%q %s", principal, Namespace, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(key))))
}
