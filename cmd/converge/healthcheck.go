package main

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/server"
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
		if url, err = server.LocalHealthURL(os.Getenv("CONVERGE_ADDR"), os.Getenv("CONVERGE_TLS_CERT") != ""); err != nil {
			cli.Fatal("converge healthcheck", err, 2)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := server.Probe(ctx, url); err != nil {
		cli.Fatal("converge healthcheck", err, 1)
	}
}
