package server

import (
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/server/internal/registry"
)

func TestClusterKeyValidated(t *testing.T) {
	cfg := Config{ClusterKey: "too-short"}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "CONVERGE_CLUSTER_KEY") {
		t.Fatalf("Validate with a bad cluster key: %v; want an error naming CONVERGE_CLUSTER_KEY", err)
	}
}

// TestServersShareStateDirKey: a server started again on the same state
// directory verifies the secrets the first one signed.
func TestServersShareStateDirKey(t *testing.T) {
	dir := t.TempDir()
	first := newTestServer(t, func(c *Config) { c.StateDir = dir })
	second := newTestServer(t, func(c *Config) { c.StateDir = dir })
	other := newTestServer(t)
	tok := first.tokens.Sign("job", registry.NewTenure(time.Now()), time.Now())
	if _, err := second.tokens.Verify("job", tok, time.Now()); err != nil {
		t.Errorf("the restarted server does not verify the first one's token: %v", err)
	}
	if _, err := other.tokens.Verify("job", tok, time.Now()); err == nil {
		t.Error("a server with a key of its own verifies another's token")
	}
}
