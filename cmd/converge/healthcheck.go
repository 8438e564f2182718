package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/converge-ci/converge/internal/cli"
)

// healthcheckMain is `converge healthcheck`: it asks the server running on
// this machine for /healthz and exits 0 when it answers ok, 1 otherwise.
// It is the container image's HEALTHCHECK, since the image has no curl.
func healthcheckMain(args []string) {
	cmd := cli.New("converge healthcheck", "converge healthcheck [--url URL]", `
Ask the server on this machine whether it is up: exit 0 when its /healthz
answers ok, 1 otherwise. It finds the server as the server itself does,
from CONVERGE_ADDR (default :8000) on the loopback address, over https when
CONVERGE_TLS_CERT is set. The container image uses it as its HEALTHCHECK.`)
	var (
		url     string
		timeout time.Duration
	)
	cmd.Flags.StringVar(&url, "url", "", "`URL` to ask instead, e.g. http://127.0.0.1:9000/healthz")
	cmd.Flags.DurationVar(&timeout, "timeout", 5*time.Second, "give up after this `duration`")
	if err := cmd.Parse(args); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	if url == "" {
		var err error
		if url, err = localHealthURL(os.Getenv("CONVERGE_ADDR"), os.Getenv("CONVERGE_TLS_CERT") != ""); err != nil {
			cli.Fatal("converge healthcheck", err, 2)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := probe(ctx, url); err != nil {
		cli.Fatal("converge healthcheck", err, 1)
	}
}

// localHealthURL is the /healthz URL of a server listening on addr (its
// --addr; empty is the default), reached on the loopback address.
func localHealthURL(addr string, useTLS bool) (string, error) {
	if addr == "" {
		addr = defaultAddr
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

// probe GETs url and wants 200 with "ok".
func probe(ctx context.Context, url string) error {
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
