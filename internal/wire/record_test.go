package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestRecordRoundTrip: a record read back is the message written, after
// any keepalives, and the bytes behind it stay unread.
func TestRecordRoundTrip(t *testing.T) {
	m := Message{Type: TypeAssign, Assign: &Assign{Protocol: "converge.resume.v1"}}
	b := append([]byte{}, Keepalive...)
	b = append(b, Keepalive...)
	b, err := AppendRecord(b, m)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(append(b, "SSH-2.0-x"...))
	got, err := ReadRecord(r)
	if err != nil || got.Type != TypeAssign || got.Assign.Protocol != "converge.resume.v1" {
		t.Fatalf("ReadRecord = %+v, %v; want the assign", got, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "SSH-2.0-x" {
		t.Errorf("left %q unread, want the stream's bytes", rest)
	}
}

// TestRecordErrors: short input and oversized or undecodable records.
func TestRecordErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"half a length", []byte{0}, io.ErrUnexpectedEOF},
		{"short body", []byte{0, 5, '{'}, io.ErrUnexpectedEOF},
		{"only keepalives", []byte{0, 0, 0, 0}, io.EOF},
		{"too long", []byte{0xff, 0xff}, ErrInvalid},
		{"not a message", []byte{0, 2, '{', '}'}, ErrInvalid},
	} {
		if _, err := ReadRecord(bytes.NewReader(tc.in)); !errors.Is(err, tc.want) {
			t.Errorf("%s: ReadRecord(%q) = %v, want %v", tc.name, tc.in, err, tc.want)
		}
	}
}

// FuzzReadRecord: ReadRecord never reads past the record it returns,
// never accepts more than MaxMessageSize, and what it accepts encodes
// back to a record it reads again as the same message.
func FuzzReadRecord(f *testing.F) {
	assign, _ := AppendRecord(nil, Message{Type: TypeAssign, Assign: &Assign{Protocol: "converge.resume.v1"}})
	for _, s := range [][]byte{assign, append([]byte{0, 0}, assign...), {0, 0}, {0}, {0x40, 0x01}, {0, 3, 'a', 'b', 'c'}, append(assign, 1, 2, 3)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		m, err := ReadRecord(r)
		if err != nil {
			return
		}
		used := len(b) - r.Len()
		if used > len(b) || used < 2 {
			t.Fatalf("used %d of %d bytes", used, len(b))
		}
		again, err := AppendRecord(nil, m)
		if err != nil {
			t.Fatalf("accepted message does not encode: %v", err)
		}
		if len(again)-2 > MaxMessageSize {
			t.Fatalf("accepted a %d-byte message", len(again)-2)
		}
		m2, err := ReadRecord(bytes.NewReader(again))
		if err != nil || m2.Type != m.Type {
			t.Fatalf("re-read %+v, %v; want %+v", m2, err, m)
		}
	})
}
