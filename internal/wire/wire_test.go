package wire

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	msgs := []Message{
		{Type: TypeHello, Hello: &Hello{Version: "v1", Protocols: []string{"p"}, Info: Info{Hostname: "h", CI: map[string]string{"K": "V"}, Status: Status{Sessions: 2}}}},
		{Type: TypeWelcome, Welcome: &Welcome{SSHUser: "u", Secret: NewToken()}},
		{Type: TypeStatus, Status: &Status{Expiry: time.Unix(1700000000, 0).UTC(), Sessions: 1}},
		{Type: TypeDial, Dial: &Dial{Token: NewToken(), Protocol: "x"}},
		{Type: TypePool, Pool: &Pool{Token: NewToken()}},
		{Type: TypeAssign, Assign: &Assign{Protocol: "converge.resume.v1"}},
		{Type: TypeAssign, Assign: &Assign{}},
		{Type: TypeBye, Bye: &Bye{Reason: "the agent ended"}},
		{Type: TypeBye, Bye: &Bye{}},
	}
	for _, m := range msgs {
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", m, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		b2, _ := Encode(got)
		if string(b) != string(b2) {
			t.Errorf("round trip changed message:\n got %s\nwant %s", b2, b)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	tok := NewToken()
	for _, in := range []string{
		``,
		`null`,
		`{}`,
		`{"type":"hello"}`,
		`{"type":"dial","hello":{"version":"x","info":{"status":{"sessions":0}}}}`,
		`{"type":"dial","dial":{"token":"short"}}`,
		`{"type":"dial","dial":{"token":"` + strings.ToUpper(tok) + `"}}`,
		`{"type":"welcome","welcome":{"ssh_user":"u","secret":""}}`,
		`{"type":"welcome","welcome":{"ssh_user":"","secret":"` + tok + `"}}`,
		`{"type":"welcome","welcome":{"ssh_user":"u\u001b[2K\nHost key: forged","secret":"` + tok + `"}}`,
		`{"type":"welcome","welcome":{"ssh_user":"` + strings.Repeat("u", MaxUserLength+1) + `","secret":"` + tok + `"}}`,
		`{"type":"hello","hello":{"version":"x","secret":"` + tok + `","info":{"status":{"sessions":0}}}}`, // the secret travels in SecretHeader
		`{"type":"status","status":{"sessions":-1}}`,
		`{"type":"nope","status":{"sessions":1}}`,
		`{"type":"status","status":{"sessions":1},"dial":{"token":"` + tok + `"}}`,
		`{"type":"status","status":{"sessions":1},"extra":1}`,
		`{"type":"status","status":{"sessions":1}} {}`,
		`{"type":"pool","pool":{"token":"short"}}`,
		`{"type":"pool","pool":{}}`,
		`{"type":"pool","assign":{}}`,
		`{"type":"assign","assign":{"protocol":"x","token":"` + tok + `"}}`,
		`{"type":"assign","pool":{"token":"` + tok + `"}}`,
		`{"type":"status","status":{"sessions":1,"x":` + strings.Repeat("1", MaxMessageSize) + `}}`,
	} {
		if m, err := Decode([]byte(in)); err == nil {
			t.Errorf("Decode(%.80q) = %+v, want error", in, m)
		} else if !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%.80q) error %v does not wrap ErrInvalid", in, err)
		}
	}
}

func TestValidUser(t *testing.T) {
	for _, tc := range []struct {
		user string
		ok   bool
	}{
		{"converge", true},
		{"ci-user_1.x", true},
		{strings.Repeat("u", MaxUserLength), true},
		{strings.Repeat("u", MaxUserLength+1), false},
		{"", false},
		{"a b", false},
		{"u\n", false},
		{"u\x1b[31m", false},
		{"us\u00e9r", false},
		{"u@h", false},
	} {
		if err := ValidUser(tc.user); (err == nil) != tc.ok {
			t.Errorf("ValidUser(%q) = %v, want ok %v", tc.user, err, tc.ok)
		}
	}
}

func TestValidID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"myjob", true},
		{"build-42_linux.amd64", true},
		{strings.Repeat("a", MaxIDLength), true},
		{"", false},
		{strings.Repeat("a", MaxIDLength+1), false},
		{".hidden", false},
		{"a/b", false},
		{"a b", false},
		{"ünï", false},
		{"a%2F", false},
	} {
		if err := ValidID(tc.id); (err == nil) != tc.ok {
			t.Errorf("ValidID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
	for range 100 {
		if id := NewID(); ValidID(id) != nil {
			t.Fatalf("NewID() = %q is not valid", id)
		}
		if tok := NewToken(); ValidToken(tok) != nil {
			t.Fatalf("NewToken() = %q is not valid", tok)
		}
	}
}

// FuzzDecode checks that Decode never panics, and that whatever it accepts
// survives a round trip through Encode unchanged in meaning.
func FuzzDecode(f *testing.F) {
	tok := NewToken()
	for _, s := range []string{
		`{"type":"hello","hello":{"version":"v","protocols":["a"],"info":{"hostname":"h","ci":{"A":"b"},"status":{"sessions":0}}}}`,
		`{"type":"welcome","welcome":{"ssh_user":"u","secret":"` + tok + `"}}`,
		`{"type":"status","status":{"expiry":"2026-01-02T03:04:05Z","sessions":3}}`,
		`{"type":"dial","dial":{"token":"` + tok + `","protocol":"converge.resume.v1"}}`,
		`{"type":"dial"}`,
		`{"type":"pool","pool":{"token":"` + tok + `"}}`,
		`{"type":"assign","assign":{"protocol":"converge.resume.v1"}}`,
		`[]`,
		"\x00\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		enc, err := Encode(m)
		if err != nil {
			t.Fatalf("accepted %q but cannot encode it: %v", b, err)
		}
		m2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-decode of %q: %v", enc, err)
		}
		enc2, _ := Encode(m2)
		if string(enc) != string(enc2) {
			t.Fatalf("unstable round trip: %q then %q", enc, enc2)
		}
	})
}
