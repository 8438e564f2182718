package wire

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodeStrict complements FuzzDecode: every rejection wraps
// ErrInvalid (callers classify with errors.Is), nothing over the size limit
// is accepted, and accepted messages decode back to equal values. The seeds
// (hostile ones included) run in every normal `go test`;
// `go test -fuzz FuzzDecodeStrict ./internal/wire` explores further.
func FuzzDecodeStrict(f *testing.F) {
	tok := strings.Repeat("ab", TokenLength/2)
	for _, s := range []string{
		`{"type":"hello","hello":{"version":"1.0","info":{"hostname":"ci","status":{"sessions":0}}}}`,
		`{"type":"hello","hello":{"version":"1.0","protocols":["converge.resume.v1"],"info":{"status":{"sessions":1}}}}`,
		`{"type":"hello","hello":{"version":"1.0","secret":"` + tok + `","info":{"status":{"sessions":1}}}}`,
		`{"type":"welcome","welcome":{"ssh_user":"converge","secret":"` + tok + `"}}`,
		`{"type":"welcome","welcome":{"ssh_user":"conv\u001b[2K\r\nFORGED","secret":"` + tok + `"}}`,
		`{"type":"status","status":{"expiry":"2026-01-02T03:04:05Z","sessions":2}}`,
		`{"type":"dial","dial":{"token":"` + tok + `","protocol":"converge.resume.v1"}}`,
		`{"type":"dial","dial":{"token":"` + tok + `"}}`,
		`{"type":"dial","dial":{"token":"xyz"}}`,
		`{"type":"pool","pool":{"token":"` + tok + `"}}`,
		`{"type":"pool","pool":{"token":"` + tok + `"},"assign":{}}`,
		`{"type":"assign","assign":{"protocol":"converge.resume.v1"}}`,
		`{"type":"assign","assign":{}}`,
		`{"type":"status","status":{"sessions":-1}}`,
		`{"type":"hello","welcome":{}}`,
		`{"type":"nope"}`,
		`{"type":"dial","dial":{"token":"` + tok + `"}} {}`,
		`{"type":"dial","dial":{"token":"` + tok + `","extra":1}}`,
		`{"type":"hello","hello":{"info":{"ci":{"A":"b"}}}}`,
		`[]`, `null`, `{`, ``, "\x00\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode(%q) error %v does not wrap ErrInvalid", b, err)
			}
			return
		}
		if len(b) > MaxMessageSize {
			t.Fatalf("Decode accepted %d bytes, over the %d limit", len(b), MaxMessageSize)
		}
		enc, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode of decoded %q: %v", b, err)
		}
		m2, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %v", b, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the message:\n%#v\n%#v", m, m2)
		}
	})
}

func TestDecodeRejectsOversize(t *testing.T) {
	b := []byte(`{"type":"status","status":{"sessions":1},"x":"` + strings.Repeat("a", MaxMessageSize) + `"}`)
	if _, err := Decode(b); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Decode of %d bytes: %v; want ErrInvalid naming the limit", len(b), err)
	}
}
