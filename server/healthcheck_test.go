package server

import (
	"context"
	"strings"
	"testing"
)

func TestLocalHealthURL(t *testing.T) {
	for _, tc := range []struct {
		addr string
		tls  bool
		want string
	}{
		{"", false, "http://127.0.0.1:8000/healthz"},
		{":9000", true, "https://127.0.0.1:9000/healthz"},
		{"0.0.0.0:80", false, "http://127.0.0.1:80/healthz"},
		{"[::]:8000", false, "http://[::1]:8000/healthz"},
		{"10.0.0.5:8001", false, "http://10.0.0.5:8001/healthz"},
	} {
		if got, err := LocalHealthURL(tc.addr, tc.tls); err != nil || got != tc.want {
			t.Errorf("LocalHealthURL(%q, %v) = %q, %v; want %q", tc.addr, tc.tls, got, err, tc.want)
		}
	}
	if _, err := LocalHealthURL("8000", false); err == nil || !strings.Contains(err.Error(), "HOST:PORT") {
		t.Errorf("LocalHealthURL(%q): %v; want an error asking for HOST:PORT", "8000", err)
	}
}

// TestProbe: the probe wants 200 "ok", and says what else it got.
func TestProbe(t *testing.T) {
	r := runServer(t)
	if err := Probe(context.Background(), r.http()+"/healthz"); err != nil {
		t.Fatalf("probe of a running server: %v", err)
	}
	if err := Probe(context.Background(), r.http()+"/nothing-here"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("probe of a 404: %v; want an error naming the status", err)
	}
}
