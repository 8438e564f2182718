package sshd

import (
	"strconv"
	"testing"
)

func TestDetachFilter(t *testing.T) {
	for _, tc := range []struct {
		in     []string // reads, in order
		out    string
		keys   int
		detach bool
	}{
		{[]string{"~d"}, "", 2, true},
		{[]string{"ls\r~d"}, "ls\r", 5, true},
		{[]string{"ls\r", "~", "d"}, "ls\r", 5, true},
		{[]string{"echo ~d\r"}, "echo ~d\r", 8, false},
		{[]string{"~~d"}, "~d", 3, false},
		{[]string{"~x"}, "~x", 2, false},
		{[]string{"\x1b[2;2R\x1b[3;1R~d"}, "\x1b[2;2R\x1b[3;1R", 2, true}, // cursor reports
		{[]string{"\x1b[A~d"}, "\x1b[A", 2, true},                         // an arrow key
		{[]string{"a\x1bOA\r~d"}, "a\x1bOA\r", 4, true},
	} {
		var f detachFilter
		var out string
		var keys int
		var detach bool
		for _, r := range tc.in {
			o, k, d := f.filter([]byte(r))
			out, keys, detach = out+string(o), keys+k, d
			if d {
				break
			}
		}
		if out != tc.out || keys != tc.keys || detach != tc.detach {
			t.Errorf("input %q: out %s, %d keys, detach %v; want %s, %d, %v",
				tc.in, strconv.Quote(out), keys, detach, strconv.Quote(tc.out), tc.keys, tc.detach)
		}
	}
}

func TestStripQueries(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a\x1b[6nb", "ab"},                      // cursor position
		{"\x1b[c\x1b[>c\x1b[0c", ""},             // device attributes
		{"\x1b[?u\x1b[>0q", ""},                  // kitty keyboard, XTVERSION
		{"\x1b[?12$p\x1b[2$p", ""},               // DECRQM
		{"\x1b]11;?\x07\x1b]10;?\x1b\\", ""},     // colours
		{"\x1bP+q544e\x1b\\\x1bP$q q\x1b\\", ""}, // XTGETTCAP, DECRQSS
		{"\x1b[2J\x1b[H\x1b[1;31mred\x1b[0m\x1b[?1049h\x1b[5;1H", "\x1b[2J\x1b[H\x1b[1;31mred\x1b[0m\x1b[?1049h\x1b[5;1H"},
	} {
		if got := string(stripQueries([]byte(tc.in))); got != tc.want {
			t.Errorf("stripQueries(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
