package sshd

import "testing"

func TestLoopbackFor(t *testing.T) {
	for bind, want := range map[string]string{
		"": "127.0.0.1", "localhost": "127.0.0.1", "127.0.0.1": "127.0.0.1",
		"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "10.1.2.3": "127.0.0.1",
		"::1": "::1", "::": "127.0.0.1",
	} {
		if got := loopbackFor(bind); got != want {
			t.Errorf("loopbackFor(%q) = %q, want %q", bind, got, want)
		}
	}
}
