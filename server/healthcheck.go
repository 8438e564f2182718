package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// LocalHealthURL is the /healthz URL of a server listening on addr (its
// Config.Addr; empty is DefaultAddr), reached on the loopback address,
// over https when useTLS.
func LocalHealthURL(addr string, useTLS bool) (string, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("CONVERGE_ADDR=%q is not HOST:PORT: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/healthz", nil
}

// Probe asks the server on this machine whether it runs: it GETs url
// (its /healthz) and wants 200 with "ok"; the error says what it got.
func Probe(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// The probe asks a server on this machine whether it runs: it sends
	// nothing secret and believes nothing beyond "ok", so the certificate,
	// issued for the public name and not for 127.0.0.1, is not checked.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		Proxy:           nil, // never through HTTP(S)_PROXY
	}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("the server did not answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return fmt.Errorf("read the answer of %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("%s answered %s: %q", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
