package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writePair writes a self-signed certificate for 127.0.0.1 with serial to
// certFile and its key to keyFile, both stamped with mod, and returns the
// certificate.
func writePair(t *testing.T, certFile, keyFile string, serial int64, mod time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "converge test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	os.Chtimes(certFile, mod, mod)
	os.Chtimes(keyFile, mod, mod)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func servedSerial(t *testing.T, r *certReloader) int64 {
	t.Helper()
	c, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Int64()
}

func TestCertReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	t0 := time.Now().Add(-time.Hour)
	writePair(t, certFile, keyFile, 1, t0)
	r, err := newCertReloader(certFile, keyFile, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	r.interval = 0 // look at the files on every handshake
	if got := servedSerial(t, r); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	// A renewal is picked up without a restart.
	writePair(t, certFile, keyFile, 2, t0.Add(time.Minute))
	if got := servedSerial(t, r); got != 2 {
		t.Fatalf("after renewal, serial %d, want 2", got)
	}
	// A renewal caught halfway (the key not yet written) keeps the old pair.
	os.WriteFile(certFile, []byte("not a certificate"), 0o600)
	os.Chtimes(certFile, t0.Add(2*time.Minute), t0.Add(2*time.Minute))
	if got := servedSerial(t, r); got != 2 {
		t.Fatalf("with a broken pair on disk, serial %d, want the previous 2", got)
	}
	// Between checks, nothing is read.
	r.interval = time.Hour
	writePair(t, certFile, keyFile, 3, t0.Add(3*time.Minute))
	if got := servedSerial(t, r); got != 2 {
		t.Fatalf("within the check interval, serial %d, want 2", got)
	}
}

func TestCertReloadRefusesABadPairAtStart(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, []byte("junk"), 0o600)
	os.WriteFile(keyFile, []byte("junk"), 0o600)
	if _, err := newCertReloader(certFile, keyFile, testLog(t)); err == nil {
		t.Fatal("a bad pair at start was accepted")
	}
}

// TestTLSServerPicksUpRenewal: a running server presents the renewed
// certificate to new connections, without a restart.
func TestTLSServerPicksUpRenewal(t *testing.T) {
	certCheckInterval = 0
	t.Cleanup(func() { certCheckInterval = 10 * time.Second })
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	t0 := time.Now().Add(-time.Hour)
	writePair(t, certFile, keyFile, 1, t0)
	r := runServer(t, func(c *Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	serial := func() int64 {
		t.Helper()
		c, err := tls.Dial("tcp", r.addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	writePair(t, certFile, keyFile, 2, t0.Add(time.Minute))
	if got := serial(); got != 2 {
		t.Fatalf("after renewal, the running server presents serial %d, want 2", got)
	}
}
