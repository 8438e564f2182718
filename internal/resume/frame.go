package resume

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Frame types. Every frame is a 5-byte header, type then the body length
// as a big-endian uint32, followed by the body. The relay between the two
// ends copies bytes, not messages, so frames are delimited here, not by
// WebSocket message boundaries.
const (
	frameHello = 'H' // version(1) flags(1) token(16) received(8) window(4)
	frameData  = 'D' // offset(8) payload(1..MaxPayload)
	frameAck   = 'A' // consumed(8)
	frameFin   = 'F' // offset(8): the sender's stream ends here
	frameError = 'E' // reason, UTF-8, at most maxReason bytes; the sender gives up
)

const (
	headerLen = 5
	helloLen  = 1 + 1 + TokenLen + 8 + 4
	// MaxPayload is the most data one frame carries.
	MaxPayload = 64 << 10
	// maxBody bounds any frame body: a data frame's offset and payload.
	maxBody   = 8 + MaxPayload
	maxReason = 256
	version   = 1
	// flagNew in a hello starts a new session; without it the hello
	// resumes the session its token names.
	flagNew = 1
)

// TokenLen is the length of a session token in bytes.
const TokenLen = 16

// ErrProtocol wraps every malformed or impossible frame.
var ErrProtocol = errors.New("resume protocol violation")

// frame is one decoded frame. Which fields are set depends on typ.
type frame struct {
	typ    byte
	flags  byte           // hello
	token  [TokenLen]byte // hello
	offset uint64         // hello: bytes received; data, fin: stream offset; ack: bytes consumed
	window uint32         // hello: the most unread bytes the sender buffers
	data   []byte         // data: payload (aliases the read buffer); error: reason
}

// appendFrame appends the encoding of f to b.
func appendFrame(b []byte, f frame) []byte {
	var body int
	switch f.typ {
	case frameHello:
		body = helloLen
	case frameData:
		body = 8 + len(f.data)
	case frameAck, frameFin:
		body = 8
	case frameError:
		body = len(f.data)
	}
	b = append(b, f.typ)
	b = binary.BigEndian.AppendUint32(b, uint32(body))
	switch f.typ {
	case frameHello:
		b = append(b, version, f.flags)
		b = append(b, f.token[:]...)
		b = binary.BigEndian.AppendUint64(b, f.offset)
		b = binary.BigEndian.AppendUint32(b, f.window)
	case frameData:
		b = binary.BigEndian.AppendUint64(b, f.offset)
		b = append(b, f.data...)
	case frameAck, frameFin:
		b = binary.BigEndian.AppendUint64(b, f.offset)
	case frameError:
		b = append(b, f.data...)
	}
	return b
}

// checkHeader validates a frame header and returns the type and body length.
func checkHeader(h []byte) (typ byte, n int, err error) {
	typ = h[0]
	u := binary.BigEndian.Uint32(h[1:headerLen])
	var ok bool
	switch typ {
	case frameHello:
		ok = u == helloLen
	case frameData:
		ok = u > 8 && u <= maxBody
	case frameAck, frameFin:
		ok = u == 8
	case frameError:
		ok = u <= maxReason
	default:
		return 0, 0, fmt.Errorf("%w: unknown frame type 0x%02x", ErrProtocol, typ)
	}
	if !ok {
		return 0, 0, fmt.Errorf("%w: %q frame with a %d-byte body", ErrProtocol, typ, u)
	}
	return typ, int(u), nil
}

// parseBody decodes the body of a frame whose header checkHeader accepted.
// The returned frame's data aliases body.
func parseBody(typ byte, body []byte) (frame, error) {
	f := frame{typ: typ}
	switch typ {
	case frameHello:
		if body[0] != version {
			return frame{}, fmt.Errorf("%w: hello of version %d, this end speaks %d", ErrProtocol, body[0], version)
		}
		f.flags = body[1]
		if f.flags&^flagNew != 0 {
			return frame{}, fmt.Errorf("%w: unknown hello flags 0x%02x", ErrProtocol, f.flags)
		}
		copy(f.token[:], body[2:2+TokenLen])
		f.offset = binary.BigEndian.Uint64(body[2+TokenLen:])
		f.window = binary.BigEndian.Uint32(body[2+TokenLen+8:])
	case frameData:
		f.offset = binary.BigEndian.Uint64(body)
		f.data = body[8:]
	case frameAck, frameFin:
		f.offset = binary.BigEndian.Uint64(body)
	case frameError:
		if !utf8.Valid(body) {
			return frame{}, fmt.Errorf("%w: error reason is not UTF-8", ErrProtocol)
		}
		f.data = body
	}
	return f, nil
}

// decodeFrame decodes the first frame in b and returns the rest. It is the
// byte-slice twin of frameReader.read, for fuzzing and tests.
func decodeFrame(b []byte) (frame, []byte, error) {
	if len(b) < headerLen {
		return frame{}, nil, io.ErrUnexpectedEOF
	}
	typ, n, err := checkHeader(b[:headerLen])
	if err != nil {
		return frame{}, nil, err
	}
	if len(b) < headerLen+n {
		return frame{}, nil, io.ErrUnexpectedEOF
	}
	f, err := parseBody(typ, b[headerLen:headerLen+n])
	return f, b[headerLen+n:], err
}

// frameReader reads frames from a byte stream through one buffer that
// holds a maximal frame, so a peer can make it hold at most that, and a
// frame's body is parsed where it was read, never copied.
type frameReader struct {
	r *bufio.Reader
}

// readBuffer is the frameReader's buffer: a maximal frame, rounded up to a
// power of two so that a read takes more than one frame when more wait.
const readBuffer = 128 << 10

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, readBuffer)}
}

// read returns the next frame; its data is valid until the next read.
func (fr *frameReader) read() (frame, error) {
	h, err := fr.r.Peek(headerLen)
	if err != nil {
		if len(h) > 0 && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, err
	}
	typ, n, err := checkHeader(h)
	if err != nil {
		return frame{}, err
	}
	b, err := fr.r.Peek(headerLen + n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, err
	}
	fr.r.Discard(headerLen + n) // b stays valid until the next Peek
	return parseBody(typ, b[headerLen:])
}
