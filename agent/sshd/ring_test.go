package sshd

import (
	"bytes"
	"fmt"
	"testing"
)

// TestRing writes in chunks of many sizes and checks that reading from
// any offset returns exactly the bytes a plain log would hold there, and
// that offsets older than the capacity skip to the oldest byte kept.
func TestRing(t *testing.T) {
	for _, tc := range []struct{ size, chunk, total int }{
		{16, 1, 100}, {16, 5, 100}, {16, 16, 100}, {16, 17, 100}, {16, 40, 200}, {1024, 100, 5000},
	} {
		t.Run(fmt.Sprintf("size%d/chunk%d", tc.size, tc.chunk), func(t *testing.T) {
			r := newRing(tc.size)
			var log []byte
			for i := 0; len(log) < tc.total; i++ {
				p := make([]byte, tc.chunk)
				for j := range p {
					p[j] = byte(len(log) + j)
				}
				r.write(p)
				log = append(log, p...)
				if r.end != int64(len(log)) {
					t.Fatalf("end %d after %d bytes", r.end, len(log))
				}
				for off := int64(0); off <= r.end; off++ {
					got := readAll(r, off)
					from := max(off, int64(len(log)-tc.size))
					if want := log[from:]; !bytes.Equal(got, want) {
						t.Fatalf("after %d bytes, read from %d: got %v, want %v", len(log), off, got, want)
					}
				}
			}
		})
	}
}

func readAll(r *ring, off int64) []byte {
	var out []byte
	p := make([]byte, 7)
	for {
		n, next, _ := r.readAt(off, p)
		if n == 0 {
			return out
		}
		out = append(out, p[:n]...)
		off = next
	}
}
