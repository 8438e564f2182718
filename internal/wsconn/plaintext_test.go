package wsconn

import "testing"

func TestPlainTextRemote(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"ws://converge.example.com", true},
		{"ws://10.0.0.7:8000/prefix", true},
		{"http://converge.example.com", true},
		{"ws://127.0.0.1.example.com", true},
		{"ws://localhost.example.com:80", true},
		{"ws://127.0.0.1:8000", false},
		{"ws://127.9.9.9", false},
		{"ws://[::1]:8000", false},
		{"ws://localhost:8000", false},
		{"wss://converge.example.com", false},
		{"https://converge.example.com", false},
	} {
		if got := PlainTextRemote(tc.url); got != tc.want {
			t.Errorf("PlainTextRemote(%q) = %v, want %v", tc.url, got, tc.want)
		}
	}
}
