package recording

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// header is the asciicast v2 header line.
func header(h Header, start time.Time) []byte {
	w, ht := h.Width, h.Height
	if w <= 0 {
		w = 80
	}
	if ht <= 0 {
		ht = 24
	}
	v := struct {
		Version   int               `json:"version"`
		Width     int               `json:"width"`
		Height    int               `json:"height"`
		Timestamp int64             `json:"timestamp"`
		Title     string            `json:"title,omitempty"`
		Env       map[string]string `json:"env,omitempty"`
	}{2, w, ht, start.Unix(), h.Title, map[string]string{}}
	if h.Term != "" {
		v.Env["TERM"] = h.Term
	}
	if h.Shell != "" {
		v.Env["SHELL"] = h.Shell
	}
	b, _ := json.Marshal(v)
	return append(b, '\n')
}

// eventLine is one asciicast v2 event: [seconds, "o", "text"].
func eventLine(at time.Duration, kind byte, text string) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	b.WriteString(strconv.FormatFloat(at.Seconds(), 'f', 6, 64))
	b.WriteString(`, "`)
	b.WriteByte(kind)
	b.WriteString(`", `)
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(text) // adds '\n'
	out := b.Bytes()
	out[len(out)-1] = ']'
	return append(out, '\n')
}

// completeUTF8 splits p before an incomplete UTF-8 sequence at its end
// (a read may cut a character in two), which the next event completes.
// Bytes that can never be valid UTF-8 stay in text (JSON shows them as
// U+FFFD), so rest is at most 3 bytes.
func completeUTF8(p []byte) (text, rest []byte) {
	for i := 1; i <= 3 && i <= len(p); i++ {
		c := p[len(p)-i]
		if c < 0x80 {
			break // ASCII: complete
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(p[len(p)-i:]) {
				return p[:len(p)-i], append([]byte(nil), p[len(p)-i:]...)
			}
			break
		}
	}
	return p, nil
}
