package wsconn

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestSanitize(t *testing.T) {
	long := strings.Repeat("abcdefghij", 30)
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{`no agent is connected with ID "x"`, `no agent is connected with ID "x"`},
		{"  trailing newline\n", "trailing newline"},
		{"two\nlines\r\n\tand more", "two lines and more"},
		{"red \x1b[31malert\x1b[0m", `red \x1b[31malert\x1b[0m`},
		{"bell\a nul\x00 del\x7f", `bell\a nul\x00 del\x7f`},
		{"c1 csi \u009b2J nel\u0085x", `c1 csi \u009b2J nel x`},
		{"bidi \u202eevil", `bidi \u202eevil`},
		{"bad utf8 \xff\xfe", `bad utf8 \xff\xfe`},
		{"ünïcödé ✓ 日本", "ünïcödé ✓ 日本"},
		{long, long[:MaxTextRunes-3] + "..."},
		{strings.Repeat("\x1b", 100), strings.Repeat(`\x1b`, 100)[:MaxTextRunes-3] + "..."},
	} {
		if got := Sanitize(tc.in); got != tc.want {
			t.Errorf("Sanitize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzSanitize: whatever a server sends, Sanitize returns one short line
// of valid, printable UTF-8, and sanitizing twice changes nothing.
func FuzzSanitize(f *testing.F) {
	for _, s := range []string{
		"", "ok", "a\nb", "\x1b[2K\rFORGED host key\n", "\u009b31m", "\xff", "\u2028\u2029",
		strings.Repeat("é", 300), strings.Repeat(" \n", 300) + "x", strings.Repeat("a ", 150),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Sanitize(s)
		if !utf8.ValidString(got) {
			t.Fatalf("Sanitize(%q) = %q, not valid UTF-8", s, got)
		}
		if n := utf8.RuneCountInString(got); n > MaxTextRunes {
			t.Fatalf("Sanitize(%q) has %d runes, more than %d", s, n, MaxTextRunes)
		}
		for _, r := range got {
			if !unicode.IsPrint(r) {
				t.Fatalf("Sanitize(%q) = %q holds %U", s, got, r)
			}
		}
		if strings.Contains(got, "  ") || strings.TrimSpace(got) != got {
			t.Fatalf("Sanitize(%q) = %q: doubled or outer spaces", s, got)
		}
		if again := Sanitize(got); again != got {
			t.Fatalf("Sanitize is not idempotent on %q: %q, then %q", s, got, again)
		}
	})
}
