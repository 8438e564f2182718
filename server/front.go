package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/converge-ci/converge/static"
)

// validateFront checks the Config fields of the server's front: TLS,
// proxies, pages.
func (c *Config) validateFront() error {
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("TLS needs both a certificate and a key: give --tls-cert and --tls-key together")
	}
	if _, err := parseProxies(c.TrustedProxies); err != nil {
		return err
	}
	base, err := cleanPrefix(c.BasePath)
	if err != nil {
		return fmt.Errorf("bad base path %q: %w", c.BasePath, err)
	}
	c.BasePath = base
	if c.Dist == nil {
		c.Dist = static.Dist
	}
	if c.Term == nil {
		c.Term = static.Term
	}
	return nil
}

// setupFront loads what the front needs once, at start: the TLS key pair,
// the trusted proxies, the downloads' and the terminal's checksums, the
// metrics.
func (s *Server) setupFront() error {
	var err error
	if s.proxies, err = parseProxies(s.cfg.TrustedProxies); err != nil {
		return err
	}
	if s.cfg.TLSCertFile != "" {
		certs, err := newCertReloader(s.cfg.TLSCertFile, s.cfg.TLSKeyFile, s.log)
		if err != nil {
			return err
		}
		s.tls = &tls.Config{
			GetCertificate: certs.GetCertificate,
			MinVersion:     tls.VersionTLS12,
			// HTTP/1.1 only: WebSocket upgrades need it, and pages gain little from h2.
			NextProtos: []string{"http/1.1"},
		}
	}
	if s.dist, err = newCatalogue(s.cfg.Dist); err != nil {
		return err
	}
	if s.term, err = newTerminal(s.cfg.Term, static.Xterm); err != nil {
		return err
	}
	s.changes = newChanges(maxWatchers)
	s.metrics = newMetrics(s.cfg.Version, func() int {
		n := 0
		for _, a := range s.reg.Agents() {
			if a.ready.Load() {
				n++
			}
		}
		return n
	})
	return nil
}

// streamOpen accounts for a client stream to agent a that took setup to
// establish; the returned function accounts for its end.
func (s *Server) streamOpen(a *agentConn, setup time.Duration) (closed func()) {
	s.metrics.setup.Observe(setup.Seconds())
	s.metrics.streamsOpen.Inc()
	a.streams.Add(1)
	s.changes.notify()
	return func() {
		a.streams.Add(-1)
		s.metrics.streamsOpen.Dec()
		s.changes.notify()
	}
}
