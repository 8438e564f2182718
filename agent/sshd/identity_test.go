package sshd

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// fakeCtx is a gliderlabs connection context, as the public-key callback
// sees it during authentication.
type fakeCtx struct {
	context.Context
	sync.Mutex
	vals map[any]any
}

func newFakeCtx() *fakeCtx {
	c := &fakeCtx{Context: context.Background(), vals: map[any]any{}}
	c.SetValue(ssh.ContextKeyPermissions, &ssh.Permissions{Permissions: &gossh.Permissions{}})
	return c
}

func (c *fakeCtx) User() string          { return "u" }
func (c *fakeCtx) SessionID() string     { return "0123456789abcdef" }
func (c *fakeCtx) ClientVersion() string { return "SSH-2.0-OpenSSH_9.2" }
func (c *fakeCtx) ServerVersion() string { return "SSH-2.0-Converge_test" }
func (c *fakeCtx) RemoteAddr() net.Addr  { return nil }
func (c *fakeCtx) LocalAddr() net.Addr   { return nil }
func (c *fakeCtx) Permissions() *ssh.Permissions {
	return c.Value(ssh.ContextKeyPermissions).(*ssh.Permissions)
}
func (c *fakeCtx) SetValue(k, v any) { c.Lock(); c.vals[k] = v; c.Unlock() }
func (c *fakeCtx) Value(k any) any {
	c.Lock()
	v, ok := c.vals[k]
	c.Unlock()
	if ok {
		return v
	}
	return c.Context.Value(k)
}

// fakeMeta is the ConnMetadata x/crypto passes to its callbacks.
type fakeMeta struct{ gossh.ConnMetadata }

func (fakeMeta) SessionID() []byte { return []byte{0x01, 0x23, 0x45, 0x67, 0x89} }

// TestLoginIsTheKeyProved (CVE-2024-45337 class): a client offers its own
// key, then a victim's public key it cannot sign with, then signs with its
// own. The public-key callback ran last for the victim's key, but the
// login journalled is the key x/crypto verified: the Permissions made for
// that key, which it hands to VerifiedPublicKeyCallback.
func TestLoginIsTheKeyProved(t *testing.T) {
	mallory, lineM := sshtest.NewKey(t, "mallory@box")
	victim, lineV := sshtest.NewKey(t, "victim@laptop")
	j := journal.New(nil)
	a, err := newAuthorizer(Config{AuthorizedKeys: lineM + "\n" + lineV, Journal: j}, quietLog(), func() string { return "u" })
	if err != nil {
		t.Fatal(err)
	}
	ctx := newFakeCtx()
	// What gliderlabs returns to x/crypto for each key, which x/crypto
	// caches per key.
	perms := map[string]*gossh.Permissions{}
	for _, k := range []gossh.PublicKey{mallory.PublicKey(), victim.PublicKey()} {
		if !a.publicKey(ctx, k) {
			t.Fatalf("key %s refused", gossh.FingerprintSHA256(k))
		}
		perms[string(k.Marshal())] = ctx.Permissions().Permissions
	}
	pm := perms[string(mallory.PublicKey().Marshal())]
	if pm == ctx.Permissions().Permissions {
		t.Fatal("the context's Permissions (the last key seen) are mallory's: each key needs its own")
	}
	if _, err := a.verified(ctx)(fakeMeta{}, mallory.PublicKey(), pm, "ssh-ed25519"); err != nil {
		t.Fatal(err)
	}
	var logins []journal.Login
	for _, e := range j.Entries() {
		if e.Kind == journal.KindLogin {
			logins = append(logins, *e.Login)
		}
	}
	if len(logins) != 1 || logins[0].Comment != "mallory@box" || logins[0].Fingerprint != gossh.FingerprintSHA256(mallory.PublicKey()) {
		t.Errorf("journalled logins %+v, want mallory@box's alone", logins)
	}
}

// TestRefusalsBounded: the journal, kept in memory, holds at most
// maxJournalRefusals refusals, however many strangers knock.
func TestRefusalsBounded(t *testing.T) {
	_, line := sshtest.NewKey(t, "someone")
	j := journal.New(nil)
	a, err := newAuthorizer(Config{AuthorizedKeys: line, Journal: j}, quietLog(), func() string { return "u" })
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := sshtest.NewKey(t, "stranger")
	for range maxJournalRefusals + 5 {
		a.publicKey(newFakeCtx(), stranger.PublicKey())
	}
	if n := len(j.Entries()); n != maxJournalRefusals {
		t.Errorf("the journal holds %d entries after %d refusals, want %d", n, maxJournalRefusals+5, maxJournalRefusals)
	}
}
