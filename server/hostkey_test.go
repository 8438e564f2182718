package server

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// proveKey dials /agent/id as an agent holding priv would: with its key,
// then again with its signature of the server's challenge.
func proveKey(t *testing.T, wsBase, id string, hdr http.Header, priv ed25519.PrivateKey, pub ed25519.PublicKey) (http.Header, error) {
	t.Helper()
	hdr = hdr.Clone()
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set(wire.AgentKeyHeader, base64.StdEncoding.EncodeToString(pub))
	_, err := dialControl(t, wsBase, id, hdr)
	var re *wsconn.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusUnauthorized || re.Header.Get(wire.ChallengeHeader) == "" {
		t.Fatalf("registering with a host key and no proof: %v; want 401 with a challenge", err)
	}
	ch := re.Header.Get(wire.ChallengeHeader)
	hdr.Set(wire.ChallengeHeader, ch)
	hdr.Set(wire.ProofHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(priv, wire.ProofMessage(id, ch, hdr.Get(wire.SecretHeader)))))
	return hdr, nil
}

// TestSecretBoundToHostKey: an agent that proves its host key gets
// secrets bound to it: the secret alone, or with the key but without
// its signature, does not displace it; the agent itself comes back with
// both; clients learn which key holds the ID (issue 18, finding 5).
func TestSecretBoundToHostKey(t *testing.T) {
	r := runServer(t)
	pub, priv, _ := ed25519.GenerateKey(nil)
	hdr, _ := proveKey(t, r.ws(), "bound", nil, priv, pub)
	c, welcome := registerAgent(t, r.ws(), "bound", hdr)
	defer c.CloseNow()
	if _, err := dialControl(t, r.ws(), "bound", hdr); err == nil {
		t.Fatal("a used challenge was accepted again")
	}

	// A thief who saw the secret.
	_, err := dialControl(t, r.ws(), "bound", http.Header{wire.SecretHeader: {welcome.Secret}})
	wantRefused(t, err, http.StatusConflict, "already used")
	_, thiefKey, _ := ed25519.GenerateKey(nil)
	forged, _ := proveKey(t, r.ws(), "bound", http.Header{wire.SecretHeader: {welcome.Secret}}, thiefKey, pub)
	_, err = dialControl(t, r.ws(), "bound", forged)
	wantRefused(t, err, http.StatusForbidden, "does not verify")

	// Clients learn the key.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, resp, err := websocket.Dial(ctx, r.ws()+wire.ClientPath("bound"), nil)
	if err != nil {
		t.Fatalf("client of bound: %v", err)
	}
	cl.CloseNow()
	if got := resp.Header.Get(wire.HostKeyHeader); got != wire.Fingerprint(pub) {
		t.Errorf("a client's upgrade says %s %q; want %q", wire.HostKeyHeader, got, wire.Fingerprint(pub))
	}

	// A raw stream's upgrade says it too.
	raw, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fmt.Fprintf(raw, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", wire.ClientPath("bound"), r.addr, leg.Upgrade)
	rresp, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	// This agent offers no stream protocol, so the raw stream is not
	// switched to (426, the client asks for a WebSocket: see
	// leg.Accept); the answer names the key all the same.
	if got := rresp.Header.Get(wire.HostKeyHeader); rresp.StatusCode != http.StatusUpgradeRequired || got != wire.Fingerprint(pub) {
		t.Errorf("a raw client's upgrade: %d, %s %q; want 426 and %q", rresp.StatusCode, wire.HostKeyHeader, got, wire.Fingerprint(pub))
	}
	raw.Close()

	// The agent itself, back with its secret and its key.
	back, _ := proveKey(t, r.ws(), "bound", http.Header{wire.SecretHeader: {welcome.Secret}}, priv, pub)
	c2, again := registerAgent(t, r.ws(), "bound", back)
	defer c2.CloseNow()
	was, _ := r.tokens.VerifyBound("bound", welcome.Secret, time.Now(), pub)
	if now, err := r.tokens.VerifyBound("bound", again.Secret, time.Now(), pub); err != nil || now.Tenure != was.Tenure {
		t.Errorf("back with its secret and key: %+v, %v; want the same tenure %+v", now, err, was)
	}
}
