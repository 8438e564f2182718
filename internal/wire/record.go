package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Records carry the server's control messages on a raw idle stream (an
// idle stream of the pool upgraded to a raw byte stream, see
// internal/leg), which has no messages of its own: a record is a
// 2-byte big-endian length, then that many bytes of one control message.
// A record of length 0 is a keepalive and carries nothing: the server
// sends one on an idle raw stream when it has sent nothing for a while,
// so that proxies do not cut it. The only message is the Assign, after
// which the stream's bytes follow unframed.

// AppendRecord appends m as a record to dst.
func AppendRecord(dst []byte, m Message) ([]byte, error) {
	b, err := Encode(m)
	if err != nil {
		return dst, err
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b))) // Encode bounds it to MaxMessageSize
	return append(dst, b...), nil
}

// Keepalive is the record that carries nothing.
var Keepalive = []byte{0, 0}

// ReadRecord reads records from r until one carries a message, skipping
// keepalives, and returns the message. It reads exactly the records'
// bytes, never beyond, so what follows stays in r. A message that does
// not decode, or is longer than MaxMessageSize, is an error wrapping
// ErrInvalid; the end of r before a whole record is io.ErrUnexpectedEOF
// (io.EOF before its first byte).
func ReadRecord(r io.Reader) (Message, error) {
	var buf []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return Message{}, err
		}
		n := int(binary.BigEndian.Uint16(h[:]))
		if n == 0 {
			continue
		}
		if n > MaxMessageSize {
			return Message{}, fmt.Errorf("%w: record of %d bytes, limit %d", ErrInvalid, n, MaxMessageSize)
		}
		buf = make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Message{}, err
		}
		return Decode(buf)
	}
}
