package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/test/testlog"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server"
)

// TestTLSEndToEnd: with --tls-cert/--tls-key the server speaks https and
// wss itself; the agent and wsproxy binaries reach it over wss (trusting
// the test's certificate through SSL_CERT_FILE, as Go programs do) and ssh
// runs through it.
func TestTLSEndToEnd(t *testing.T) {
	t.Parallel()
	certFile, keyFile := selfSignedCert(t)
	r := startServer(t, func(c *server.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	wss := "wss://" + r.Addr
	c := sshtest.New(t)

	agent := exec.Command(bin("agent"), "--id", "tls-job", "--dir", t.TempDir(), wss)
	agent.Env = append(os.Environ(), "SSL_CERT_FILE="+certFile, "CONVERGE_AUTHORIZED_KEYS_DATA="+c.PublicKey)
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	agent.Stderr = testlog.Writer(t)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Signal(syscall.SIGTERM); agent.Wait() })
	// The agent prints the known_hosts line to verify it by.
	sc := bufio.NewScanner(out)
	var knownHost string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "tls-job ssh-ed25519 ") {
			knownHost = line
			break
		}
	}
	if knownHost == "" {
		t.Fatalf("agent printed no known_hosts line: %v", sc.Err())
	}
	go io.Copy(io.Discard, out)
	f, err := os.OpenFile(c.KnownHosts, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(knownHost + "\n")
	f.Close()

	tgt := sshtest.Target{User: r.User, Alias: "tls-job",
		ProxyCommand: "env SSL_CERT_FILE=" + certFile + " " + bin("wsproxy") + " " + wss + "/client/tls-job"}
	if res := c.SSH(tgt, 0, "echo over-tls"); strings.TrimSpace(res.Stdout) != "over-tls" {
		t.Errorf("ssh over wss: stdout %q", res.Stdout)
	}
}

// TestSIGTERM runs the converge binary as an operator would: settings from
// the environment, JSON logs; on SIGTERM it tells a connected agent with
// close 1001 and exits 0.
func TestSIGTERM(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin("converge"), "--addr", "127.0.0.1:0", "--log-format", "json", "--state-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "CONVERGE_SESSIONS_PASSWORD=from-env", "CONVERGE_SSH_USER=envuser", "CONVERGE_DRAIN_TIMEOUT=1m")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})           // closed when the process has exited; then waitErr is set
	logs := make(chan map[string]any, 1000) // more than the server logs here, so the reader never blocks
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"msg": "NOT JSON: " + sc.Text()}
			}
			t.Log(sc.Text())
			logs <- m
		}
		close(logs)
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	next := func(msg string) map[string]any {
		t.Helper()
		for m := range logs {
			if m["msg"] == msg {
				return m
			}
			if s, _ := m["msg"].(string); strings.HasPrefix(s, "NOT JSON") {
				t.Errorf("log line is not JSON: %s", s)
			}
		}
		t.Fatalf("server exited before logging %q", msg)
		return nil
	}
	listening := next("listening")
	addr, _ := listening["addr"].(string)
	if listening["ssh_user"] != "envuser" || listening["sessions_view"] != true {
		t.Errorf("environment twins not applied: %v", listening)
	}

	// The sessions view is on (password from the environment).
	req, _ := http.NewRequest("GET", "http://"+addr+"/sessions", nil)
	req.SetBasicAuth("op", "from-env")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /sessions with the password from CONVERGE_SESSIONS_PASSWORD = %d", resp.StatusCode)
	}

	ctl := controlClient(t, "ws://"+addr, "sigterm-job")
	connected := next("agent connected")
	if connected["id"] != "sigterm-job" || connected["remote"] != "127.0.0.1" {
		t.Errorf("connect log line lacks ID or remote address: %v", connected)
	}
	closed := make(chan error, 1)
	go func() { _, _, err := ctl.Read(context.Background()); closed <- err }()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("draining")
	if code := websocket.CloseStatus(<-closed); code != websocket.StatusGoingAway {
		t.Errorf("agent's control connection closed with %v, want 1001 (going away)", code)
	}
	disconnected := next("agent disconnected")
	if disconnected["id"] != "sigterm-job" {
		t.Errorf("disconnect log line: %v", disconnected)
	}
	for range logs {
	}
	<-exited
	if waitErr != nil {
		t.Errorf("converge after SIGTERM: %v, want exit status 0", waitErr)
	}
}

// controlClient registers id with the server as an agent would, with no
// SSH behind it, and returns the control connection.
func controlClient(t *testing.T, base, id string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, base+"/agent/"+id, wsconn.Options{Subprotocols: []string{wire.ControlProtocol}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	b, err := wire.Encode(wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test", Info: wire.Info{Hostname: "h"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
	if _, b, err = c.Read(ctx); err != nil {
		t.Fatal(err)
	}
	if m, err := wire.Decode(b); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("registration: %v %v", m.Type, err)
	}
	return c
}

// selfSignedCert writes a certificate for 127.0.0.1, usable as its own
// root (SSL_CERT_FILE), and its key.
func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "converge e2e"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
