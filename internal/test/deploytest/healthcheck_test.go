package deploytest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
)

// TestHealthcheck: `converge healthcheck`, the container image's health
// check, finds the server from CONVERGE_ADDR as the server reads it (any
// address means loopback), exits 0 while it answers ok, and 1 when it
// does not.
func TestHealthcheck(t *testing.T) {
	addr := strings.TrimPrefix(startServer(t, nil).HTTP, "http://")
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{addr, ":" + port, "0.0.0.0:" + port} {
		cmd := exec.Command(bin("converge"), "healthcheck")
		cmd.Env = []string{"CONVERGE_ADDR=" + a}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("CONVERGE_ADDR=%s converge healthcheck: %v\n%s", a, err, out)
		}
	}
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	defer sick.Close()
	out, err := exec.Command(bin("converge"), "healthcheck", "--url", sick.URL+"/healthz").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "503") {
		t.Errorf("converge healthcheck of a server answering 503: %v, want exit status 1\n%s", err, out)
	}
}
