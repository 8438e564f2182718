package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// startTLSFront terminates TLS for target, as a load balancer in front
// of converge does, with a fresh self-signed certificate for 127.0.0.1
// that the test's child processes trust (SSL_CERT_FILE). Go's TLS server
// issues session tickets, so a client that keeps them resumes.
func startTLSFront(t *testing.T, target string) string {
	t.Helper()
	cert, pemFile := selfSigned(t)
	t.Setenv("SSL_CERT_FILE", pemFile) // wsproxy, run by ssh, inherits it
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	track := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			conns[c] = true
		}
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			track(c, up)
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// selfSigned makes a certificate for 127.0.0.1 that is its own root, and
// writes it to a PEM file.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "converge bench"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, file
}

// wssRows times a fresh `ssh host true` over wss:// at an added round trip
// of rtt: with a first TLS connection (wsproxy keeps no sessions) and
// with a resumed one (its session file holds the ticket of the run
// before), each against direct. The target of the resumed row is one
// round trip (TLS's own) over the ws:// target.
func wssRows(t *testing.T, s *section, reps int, c *sshtest.Client, srv *serverProc, ag *benchAgent, id string, rtt time.Duration) {
	front := startTLSFront(t, srv.Addr)
	relayAddr := startDelayProxy(t, front, rtt/2).Addr()
	_, _, direct := paths(t, srv, ag, id, rtt)
	url := " wss://" + relayAddr + "/client/" + id
	first := sshtest.Target{User: srv.User, Alias: id, ProxyCommand: bin("wsproxy") + ` --tls-sessions ""` + url}
	cache := filepath.Join(t.TempDir(), "tls-sessions.json")
	resumed := sshtest.Target{User: srv.User, Alias: id, ProxyCommand: bin("wsproxy") + " --tls-sessions " + cache + url}
	if _, err := connect(c, resumed); err != nil { // stores the first ticket
		t.Fatal(err)
	}
	a, b := pair(t, connectReps(reps), func() (time.Duration, error) { return connect(c, first) }, func() (time.Duration, error) { return connect(c, direct) })
	s.add(row{what: msLabel(rtt) + ", wss://, first TLS connection", a: ms(a), b: ms(b), comp: diff(a - b), target: "-", verdict: "-"})
	t.Logf("wss first: relay %s, direct %s, %s", ms(a), ms(b), diff(a-b))
	a, b = pair(t, connectReps(reps), func() (time.Duration, error) { return connect(c, resumed) }, func() (time.Duration, error) { return connect(c, direct) })
	over := maxConnectOver + rtt
	s.add(row{what: msLabel(rtt) + ", wss://, TLS session resumed", a: ms(a), b: ms(b), comp: diff(a - b),
		target: fmt.Sprintf("<= %+d ms", over.Milliseconds()), verdict: verdict(a-b <= over)})
	t.Logf("wss resumed: relay %s, direct %s, %s", ms(a), ms(b), diff(a-b))
}
