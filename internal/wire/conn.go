package wire

import (
	"context"
	"fmt"
	"time"

	"github.com/coder/websocket"
)

// sendTimeout bounds writing one control message.
const sendTimeout = 10 * time.Second

// Send writes m to c, a control connection, as one text message, within
// ctx and at most sendTimeout (a deadline that fires closes c, as
// coder/websocket does for every write).
func Send(ctx context.Context, c *websocket.Conn, m Message) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	return c.Write(ctx, websocket.MessageText, b)
}

// Receive reads the next control message from c. A binary message is an
// error; so is one that does not decode (see Decode): both wrap ErrInvalid.
func Receive(ctx context.Context, c *websocket.Conn) (Message, error) {
	typ, b, err := c.Read(ctx)
	if err != nil {
		return Message{}, err
	}
	return Parse(typ, b)
}

// Parse decodes a control message read as a WebSocket message of type
// typ: a binary message is an error, as is one that does not decode (see
// Decode), both wrapping ErrInvalid.
func Parse(typ websocket.MessageType, b []byte) (Message, error) {
	if typ != websocket.MessageText {
		return Message{}, fmt.Errorf("%w: binary message; control messages are text", ErrInvalid)
	}
	return Decode(b)
}
