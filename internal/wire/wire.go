// Package wire defines the control messages exchanged between an agent and the
// rendezvous server over the agent's control WebSocket, the syntax of
// rendezvous IDs and stream tokens, and the URL paths of the server's
// WebSocket endpoints: every side builds and matches them here.
//
// Messages are small JSON objects sent as WebSocket text messages, one message
// per WebSocket message, or, on an idle stream that is a raw byte stream,
// as records (ReadRecord). Decode is the only parser of control bytes from
// the network; it bounds sizes and rejects anything it does not understand.
// It is not the stream protocol: SSH bytes never pass through this package.
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Protocol names negotiated as WebSocket subprotocols.
const (
	// ControlProtocol is the agent's control connection (GET /agent/{id}).
	ControlProtocol = "converge.control.v1"
	// ControlProtocolV2 is ControlProtocol plus stream pools: the server
	// may send Pool messages, and the agent then keeps an idle stream
	// open for each, which the server assigns to a client with an Assign
	// message (see Pool). An agent that pools offers both, V2 first; a
	// server that pools picks V2, any other ControlProtocol, and the two
	// then speak v1: a dial-back per client.
	ControlProtocolV2 = "converge.control.v2"
	// StreamProtocol is an agent's dial-back connection carrying one client
	// stream (GET /agent/{id}/stream/{token}). Its binary messages carry the
	// client's bytes unchanged.
	StreamProtocol = "converge.stream.v1"
)

// MaxMessageSize bounds one control message. Anything larger is refused.
const MaxMessageSize = 16 << 10

// Message types.
const (
	TypeHello   = "hello"   // agent → server, first message
	TypeWelcome = "welcome" // server → agent, reply to hello
	TypeStatus  = "status"  // agent → server, whenever expiry or sessions change
	TypeDial    = "dial"    // server → agent: a client waits; dial back a stream
	TypePool    = "pool"    // server → agent (v2): open an idle stream for the pool
	TypeAssign  = "assign"  // server → agent (v2), first on an idle stream: a client is spliced to it
	TypeBye     = "bye"     // agent → server, last: the agent ends on purpose; free its ID now
)

// Message is one control message. Exactly the field named by Type is set.
type Message struct {
	Type    string   `json:"type"`
	Hello   *Hello   `json:"hello,omitempty"`
	Welcome *Welcome `json:"welcome,omitempty"`
	Status  *Status  `json:"status,omitempty"`
	Dial    *Dial    `json:"dial,omitempty"`
	Pool    *Pool    `json:"pool,omitempty"`
	Assign  *Assign  `json:"assign,omitempty"`
	Bye     *Bye     `json:"bye,omitempty"`
}

// Hello introduces an agent. It carries no secret: an agent re-registering
// after a lost link presents the secret from Welcome in the SecretHeader of
// its upgrade request, so the server decides on the ID before upgrading.
type Hello struct {
	Version   string   `json:"version"`
	Protocols []string `json:"protocols,omitempty"` // stream subprotocols the agent offers to clients
	Info      Info     `json:"info"`
}

// Info describes an agent for the server's sessions view. All of it is
// self-reported by the agent and shown, never trusted.
type Info struct {
	Hostname    string            `json:"hostname,omitempty"`
	OS          string            `json:"os,omitempty"`
	Arch        string            `json:"arch,omitempty"`
	User        string            `json:"user,omitempty"`
	Dir         string            `json:"dir,omitempty"`
	CI          map[string]string `json:"ci,omitempty"`
	Fingerprint string            `json:"fingerprint,omitempty"`
	Status      Status            `json:"status"`
}

// Status is what changes during an agent's life.
type Status struct {
	Expiry   time.Time `json:"expiry,omitzero"`
	Sessions int       `json:"sessions"`
}

// Welcome accepts a registration; SSHUser is valid by ValidUser. The
// server sends it again while the agent is connected, with a freshly
// signed Secret of the same hold on the ID: the agent presents the latest
// one when it re-registers.
type Welcome struct {
	SSHUser string `json:"ssh_user"`
	Secret  string `json:"secret"`
}

// Dial asks the agent to open a stream connection for a waiting client.
// Protocol is the stream subprotocol the client negotiated ("" for a
// plain stream).
type Dial struct {
	Token    string `json:"token"`
	Protocol string `json:"protocol,omitempty"`
}

// Pool asks the agent, over its control connection, to open a stream
// with Token (GET /agent/{id}/stream/{token}, like a Dial's) before any
// client asks, and to keep it open, idle, until the server sends an
// Assign on it or the control connection ends. Only a server that picked
// ControlProtocolV2 sends it.
type Pool struct {
	Token string `json:"token"`
}

// MaxIdleStreams is the most idle pool streams an agent keeps open at
// once, whatever the server asks: a server pools a few (at most 4 per
// agent); a relay asking for more is not honoured.
const MaxIdleStreams = 16

// Assign is the first message that the server sends on an idle stream of
// the pool: a client is now spliced to it. Protocol is the stream
// subprotocol the client negotiated ("" for a plain stream), as in Dial.
// On a WebSocket it is a text message and the client's bytes follow as
// binary messages; on a raw stream it is a record (AppendRecord) and the
// client's bytes follow unframed.
type Assign struct {
	Protocol string `json:"protocol,omitempty"`
}

// Bye is the agent's last control message when it ends on purpose (the
// last logout, expiry, nobody logging in, a signal, `agent wait`): the
// server frees its ID at once, with no reservation, and closes the
// connection. A control connection that ends without it (a dropped link)
// leaves the ID reserved for the agent to come back to. Reason is for
// the server's log. A server older than Bye refuses it as an unknown
// type and closes the connection: the ID then stays reserved, as before.
type Bye struct {
	Reason string `json:"reason,omitempty"`
}

// ErrInvalid wraps every decoding and validation failure.
var ErrInvalid = errors.New("invalid control message")

// Encode returns msg as one control message.
func Encode(msg Message) ([]byte, error) {
	if err := msg.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", msg.Type, err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %s message is %d bytes, limit %d", ErrInvalid, msg.Type, len(b), MaxMessageSize)
	}
	return b, nil
}

// Decode parses and validates one control message.
func Decode(b []byte) (Message, error) {
	var msg Message
	if len(b) > MaxMessageSize {
		return msg, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalid, len(b), MaxMessageSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&msg); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return Message{}, fmt.Errorf("%w: trailing data", ErrInvalid)
	}
	if err := msg.Validate(); err != nil {
		return Message{}, err
	}
	return msg, nil
}

// Validate checks that exactly the body named by Type is present and that
// its fields are well formed.
func (m Message) Validate() error {
	set := 0
	for _, p := range []bool{m.Hello != nil, m.Welcome != nil, m.Status != nil, m.Dial != nil, m.Pool != nil, m.Assign != nil, m.Bye != nil} {
		if p {
			set++
		}
	}
	if set != 1 {
		return fmt.Errorf("%w: %q message must carry exactly one body, has %d", ErrInvalid, m.Type, set)
	}
	var ok bool
	switch m.Type {
	case TypeHello:
		ok = m.Hello != nil
	case TypeWelcome:
		ok = m.Welcome != nil
		if ok {
			if err := ValidToken(m.Welcome.Secret); err != nil {
				return fmt.Errorf("%w: welcome secret: %v", ErrInvalid, err)
			}
			if err := ValidUser(m.Welcome.SSHUser); err != nil {
				return fmt.Errorf("%w: welcome ssh_user: %v", ErrInvalid, err)
			}
		}
	case TypeStatus:
		ok = m.Status != nil
		if ok && m.Status.Sessions < 0 {
			return fmt.Errorf("%w: negative session count", ErrInvalid)
		}
	case TypeDial:
		ok = m.Dial != nil
		if ok {
			if err := ValidToken(m.Dial.Token); err != nil {
				return fmt.Errorf("%w: dial token: %v", ErrInvalid, err)
			}
		}
	case TypePool:
		ok = m.Pool != nil
		if ok {
			if err := ValidToken(m.Pool.Token); err != nil {
				return fmt.Errorf("%w: pool token: %v", ErrInvalid, err)
			}
		}
	case TypeAssign:
		ok = m.Assign != nil
	case TypeBye:
		ok = m.Bye != nil
	default:
		return fmt.Errorf("%w: unknown type %q", ErrInvalid, m.Type)
	}
	if !ok {
		return fmt.Errorf("%w: %q message carries the wrong body", ErrInvalid, m.Type)
	}
	return nil
}

// SecretHeader carries an agent's registration secret in the upgrade
// request of GET /agent/{id}, so that the server decides on the ID before
// upgrading and refusals are plain HTTP errors.
const SecretHeader = "Converge-Agent-Secret"

// Headers of the upgrade request of GET /agent/{id} that carry the
// agent's credentials for the server's registration policy, checked
// before the upgrade; a refused agent gets 401 and the reason in the
// body. AgentTokenHeader carries a shared registration token,
// IDTokenHeader an OIDC identity token (a JWT) minted for the server's
// URL as audience. An agent sends those it has; a server that is open
// ignores them.
const (
	AgentTokenHeader = "Converge-Agent-Token"
	IDTokenHeader    = "Converge-Id-Token"
)

// VerifiedHeader is a response header of the upgrade of GET
// /client/{id}: what the relay verified about the agent's job, as a
// phrase ("github.com/acme/app, workflow CI, refs/heads/main, run 123
// attempt 1, by alice"), absent when it verified nothing. It is the
// relay's word, not an end-to-end check (the host key is).
const VerifiedHeader = "Converge-Verified-Job"
