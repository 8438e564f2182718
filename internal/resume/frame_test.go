package resume

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range []frame{
		{typ: frameHello, flags: flagNew, token: [TokenLen]byte{1, 2, 3}, offset: 1 << 40, window: MinBuffer},
		{typ: frameData, offset: 7, data: []byte("payload")},
		{typ: frameData, offset: 0, data: bytes.Repeat([]byte{9}, MaxPayload)},
		{typ: frameAck, offset: 12345},
		{typ: frameFin, offset: 99},
		{typ: frameError, data: []byte("no such session")},
	} {
		b := appendFrame(nil, f)
		got, rest, err := decodeFrame(b)
		if err != nil || len(rest) != 0 {
			t.Fatalf("decode(encode(%q frame)): %v, %d bytes left", f.typ, err, len(rest))
		}
		if !bytes.Equal(appendFrame(nil, got), b) {
			t.Errorf("%q frame changed in a round trip: %+v, want %+v", f.typ, got, f)
		}
		// The stream reader agrees with the slice decoder.
		fr := newFrameReader(bytes.NewReader(b))
		sf, err := fr.read()
		if err != nil || !bytes.Equal(appendFrame(nil, sf), b) {
			t.Errorf("frameReader on %q frame: %+v, %v", f.typ, sf, err)
		}
	}
}

// FuzzDecodeFrame: the frame decoder never panics, rejects with
// ErrProtocol (or asks for more bytes), never accepts a body over the
// limit, and what it accepts re-encodes to the bytes it consumed. The seeds
// run in every `go test`; `go test -fuzz FuzzDecodeFrame ./internal/resume`
// explores further.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range []frame{
		{typ: frameHello, flags: flagNew, token: [TokenLen]byte{0xff}, offset: 3, window: MinBuffer},
		{typ: frameHello, offset: 1<<64 - 1},
		{typ: frameData, offset: 1, data: []byte("x")},
		{typ: frameAck, offset: 5},
		{typ: frameFin, offset: 5},
		{typ: frameError, data: []byte("bye")},
	} {
		f.Add(appendFrame(nil, fr))
	}
	f.Add([]byte{frameData, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0})          // empty payload
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff})                      // huge length
	f.Add([]byte{frameHello, 0, 0, 0, helloLen, 2})                       // bad version
	f.Add([]byte{frameError, 0, 0, 0, 2, 0xff, 0xfe})                     // not UTF-8
	f.Add([]byte{'Z', 0, 0, 0, 0})                                        // unknown type
	f.Add(append(appendFrame(nil, frame{typ: frameAck, offset: 1}), 'F')) // trailing bytes
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, rest, err := decodeFrame(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) && err != io.ErrUnexpectedEOF {
				t.Fatalf("decode(%x): %v is neither ErrProtocol nor a short read", b, err)
			}
			return
		}
		used := b[:len(b)-len(rest)]
		if len(used) > headerLen+maxBody {
			t.Fatalf("accepted a %d-byte frame", len(used))
		}
		if enc := appendFrame(nil, fr); !bytes.Equal(enc, used) {
			t.Fatalf("decode(%x) re-encodes to %x", used, enc)
		}
	})
}
