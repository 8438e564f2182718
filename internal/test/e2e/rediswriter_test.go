package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wire"
)

// TestClusterRedisWriter: whoever can write to Redis without the
// cluster key cannot send a replica anywhere, and a holder a replica
// does reach (here, a fake one named by an entry signed with the key)
// cannot serve a page on the relay's origin, nor make the replica
// buffer a huge answer (issue 18, finding 3).
func TestClusterRedisWriter(t *testing.T) {
	t.Parallel()
	rig := newClusterRig(t, 1, false)
	var hits atomic.Int64
	holder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if strings.HasSuffix(r.URL.Path, "/huge") {
			w.Header().Set("X-Huge", strings.Repeat("a", 1<<20))
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`<html><body><script>document.title = "holder's script ran"</script>holder's page</body></html>`))
	}))
	t.Cleanup(holder.Close)
	owner := "ws://" + holder.Listener.Addr().String()
	entry := func(id, conn string) {
		b, _ := json.Marshal(map[string]any{"o": owner, "c": conn, "l": 1e15, "ts": 1, "tn": 0, "p": 1, "cf": 1, "g": "x"})
		if err := rig.rdb.HSet(context.Background(), "converge:ids", id, string(b)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	entry("forged", strings.Repeat("0", 56))
	entry("signed", signedConn(t, "signed", owner))
	entry("huge", signedConn(t, "huge", owner))
	base := rig.relay(0).HTTP

	resp, err := http.Get(base + "/client/forged")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if hits.Load() != 0 || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("an entry not signed with the cluster key: the replica sent %d requests to the address in it and answered %d; want none, and 404", hits.Load(), resp.StatusCode)
	}

	resp, err = http.Get(base + "/client/huge")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Huge") != "" {
		t.Fatalf("a holder answering with 1 MiB of headers: the replica answered %d with %d header bytes; want 503 and none of them", resp.StatusCode, len(resp.Header.Get("X-Huge")))
	}

	resp, err = http.Get(base + "/client/signed")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct, nosniff, csp := resp.Header.Get("Content-Type"), resp.Header.Get("X-Content-Type-Options"), resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(ct, "text/plain") || nosniff != "nosniff" || !strings.Contains(csp, "sandbox") {
		t.Errorf("a holder's HTML refusal relayed as Content-Type %q, X-Content-Type-Options %q, CSP %q; want text/plain, nosniff, a sandbox", ct, nosniff, csp)
	}
	ctx := browser(t)
	do(t, ctx, "open the relayed refusal", chromedp.Navigate(base+"/client/signed"))
	if title := get(t, ctx, "read the title", chromedp.Evaluate[string](`document.title`)); title != "" {
		t.Fatalf("the holder's page ran on the relay's origin: title %q", title)
	}
	if body := text(t, ctx, "body"); !strings.Contains(body, "<script>") {
		t.Fatalf("the browser shows %q; want the holder's answer as plain text", body)
	}
}

// signedConn is a connection token for id held by owner, signed with the
// test cluster's key as replicas sign theirs (docs/several-servers.md):
// 12 random bytes, then the first 16 bytes of HMAC-SHA256(key,
// "converge-entry-v1" 0 ID 0 OWNER 0 NONCE 0), in hex.
func signedConn(t *testing.T, id, owner string) string {
	key, err := hex.DecodeString(clusterKey)
	if err != nil {
		t.Fatal(err)
	}
	nonce := strings.Repeat("ab", 12)
	m := hmac.New(sha256.New, key)
	for _, part := range []string{"converge-entry-v1", id, owner, nonce} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	return nonce + hex.EncodeToString(m.Sum(nil)[:16])
}

// TestRelayNamesProvenHostKey: the real agent proves its host key when
// it registers, and the relay names that key to clients in the answer
// to their upgrade, as the fingerprint the agent prints (issue 18,
// finding 5).
func TestRelayNamesProvenHostKey(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	a := startAgent(t, r, "named", sshtest.New(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, r.URL+wire.ClientPath("named"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.CloseNow()
	if got, want := resp.Header.Get(wire.HostKeyHeader), gossh.FingerprintSHA256(a.HostKey()); got != want {
		t.Fatalf("the relay names host key %q for the agent, want its own %q", got, want)
	}
}
