package wsconn

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxTextRunes bounds the text Sanitize returns.
const MaxTextRunes = 200

// Sanitize makes text a peer sent fit to print in a log or on a terminal:
// one line of printable characters, at most MaxTextRunes runes. Runs of
// white space (newlines included) become one space, and the ends are
// trimmed; other control and invisible characters (C0, DEL, C1 such as
// CSI, bidi overrides) and invalid UTF-8 become visible Go escapes such as
// \x1b; text cut at the bound ends in "...". Sanitize(Sanitize(s)) ==
// Sanitize(s).
//
// Every text from the server that the agent or a client prints goes through
// it (RefusedError.Message does), since the job log is where users read
// the host key they trust.
func Sanitize(s string) string {
	var b strings.Builder
	n := 0         // runes in b
	space := false // a space is due before the next piece
	for i := 0; i < len(s) && n <= MaxTextRunes; {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && size == 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case unicode.IsSpace(r):
			space = n > 0
		case !unicode.IsPrint(r):
			q := strconv.QuoteRune(r)
			piece = q[1 : len(q)-1]
		default:
			piece = s[i : i+size]
		}
		i += size
		if piece == "" {
			continue
		}
		if space {
			b.WriteByte(' ')
			n++
			space = false
		}
		b.WriteString(piece)
		n += utf8.RuneCountInString(piece)
	}
	out := b.String()
	if n <= MaxTextRunes {
		return out
	}
	cut, k := 0, 0
	for cut = range out {
		if k == MaxTextRunes-3 {
			break
		}
		k++
	}
	return strings.TrimRight(out[:cut], " ") + "..."
}
