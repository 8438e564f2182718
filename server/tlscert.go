package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves the TLS certificate from files and picks up a
// renewed one (certbot, cert-manager) without a restart: at most once per
// interval, a handshake looks at the files' modification times and, when
// they changed, loads the pair again. A pair that fails to load (a renewal
// caught halfway) is logged and the previous certificate kept.
type certReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	mod     [2]time.Time // of certFile and keyFile when cert was loaded
	checked time.Time
}

// certCheckInterval is how often handshakes look at the certificate files
// (a variable so that tests can shorten it).
var certCheckInterval = 10 * time.Second

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, interval: certCheckInterval, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) modTimes() [2]time.Time {
	var m [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		if st, err := os.Stat(f); err == nil {
			m[i] = st.ModTime()
		}
	}
	return m
}

// load reads the pair; the caller holds mu or has not shared r yet.
func (r *certReloader) load() error {
	mod := r.modTimes()
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.mod = &cert, mod
	return nil
}

// GetCertificate is the tls.Config hook.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= r.interval {
		r.checked = now
		if r.modTimes() != r.mod {
			if err := r.load(); err != nil {
				r.log.Warn("keeping the previous TLS certificate", "error", err)
			} else {
				r.log.Info("TLS certificate reloaded", "cert", r.certFile)
			}
		}
	}
	return r.cert, nil
}
