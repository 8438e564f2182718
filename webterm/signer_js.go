//go:build js && wasm

package webterm

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"syscall/js"

	"golang.org/x/crypto/ssh"
)

// webCryptoSigner is the browser's own key: an Ed25519 key that WebCrypto
// made non-extractable, so no script (this one included) can read the
// private half; it can only ask the browser to sign with it.
type webCryptoSigner struct {
	pub  ssh.PublicKey
	sign js.Value // function(Uint8Array) → Promise<ArrayBuffer>
}

// browserSigner makes an ssh.Signer of the page's {publicKey, sign}:
// the raw 32-byte public key and a function that signs with the private
// key (crypto.subtle.sign).
func browserSigner(v js.Value) (ssh.Signer, error) {
	pub, err := browserPublicKey(v.Get("publicKey"))
	if err != nil {
		return nil, err
	}
	if v.Get("sign").Type() != js.TypeFunction {
		return nil, fmt.Errorf("the browser key has no sign function")
	}
	return &webCryptoSigner{pub: pub, sign: v.Get("sign")}, nil
}

func browserPublicKey(v js.Value) (ssh.PublicKey, error) {
	raw := bytesFromJS(v)
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("the browser key's public half is %d bytes, want %d", len(raw), ed25519.PublicKeySize)
	}
	return ssh.NewPublicKey(ed25519.PublicKey(raw))
}

func (s *webCryptoSigner) PublicKey() ssh.PublicKey { return s.pub }

// Sign asks WebCrypto to sign data. It waits for the browser, so it must
// not run on the goroutine of a JavaScript callback.
func (s *webCryptoSigner) Sign(_ io.Reader, data []byte) (*ssh.Signature, error) {
	v, err := await(s.sign.Invoke(bytesToJS(data)))
	if err != nil {
		return nil, fmt.Errorf("the browser did not sign with its key: %w", err)
	}
	sig := bytesFromJS(v)
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("the browser's signature is %d bytes, want %d", len(sig), ed25519.SignatureSize)
	}
	return &ssh.Signature{Format: ssh.KeyAlgoED25519, Blob: sig}, nil
}
