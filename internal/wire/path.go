package wire

import (
	"errors"
	"strings"
)

// The server's WebSocket endpoints, as net/http.ServeMux path patterns.
// The wildcard {id} is a rendezvous ID (ValidID) and {token} a stream
// token (ValidToken); the server checks both before it upgrades. The path
// builders below produce exactly the paths these patterns match.
const (
	// AgentPattern is an agent's control connection.
	AgentPattern = "/agent/{id}"
	// StreamPattern is an agent's dial-back connection for one client stream.
	StreamPattern = "/agent/{id}/stream/{token}"
	// ClientPattern is a user's connection to an agent.
	ClientPattern = "/client/{id}"
	// TerminalPattern is the browser terminal's page for an agent (a
	// page, not a WebSocket: the page dials ClientPattern).
	TerminalPattern = "/terminal/{id}"
)

const (
	agentPrefix    = "/agent/"
	streamInfix    = "/stream/"
	clientPrefix   = "/client/"
	terminalPrefix = "/terminal/"
)

// AgentPath returns the path of the control connection of the agent
// holding id; it matches AgentPattern. id is not checked or escaped: pass
// a valid ID.
func AgentPath(id string) string { return agentPrefix + id }

// StreamPath returns the path an agent dials back on to carry the client
// stream that token names; it matches StreamPattern. Neither argument is
// checked or escaped.
func StreamPath(id, token string) string { return agentPrefix + id + streamInfix + token }

// ClientPath returns the path a user's tool dials to reach the agent
// holding id; it matches ClientPattern. id is not checked or escaped, so
// a placeholder such as OpenSSH's %n may stand in for it.
func ClientPath(id string) string { return clientPrefix + id }

// TerminalPath returns the path of the browser terminal for the agent
// holding id; it matches TerminalPattern. id is not checked or escaped.
func TerminalPath(id string) string { return terminalPrefix + id }

// HTTPScheme is the scheme an HTTP client dials a WebSocket URL's host
// with: http for ws, https for wss. WebSocketScheme is the reverse, for
// the WebSocket URLs of a server reached over HTTP. Any other scheme is
// returned as it is. These are the one mapping between the two.
func HTTPScheme(ws string) string {
	switch ws {
	case "ws":
		return "http"
	case "wss":
		return "https"
	}
	return ws
}

// WebSocketScheme is ws for http, wss for https (see HTTPScheme).
func WebSocketScheme(http string) string {
	switch http {
	case "http":
		return "ws"
	case "https":
		return "wss"
	}
	return http
}

// ClientID returns the rendezvous ID a client URL's path ends in:
// everything after its last "/client/", which must be a valid ID. What
// comes before it is left alone, so a server reached under a path prefix
// works. The errors complete a sentence about the URL ("bad URL ...: ").
func ClientID(path string) (string, error) {
	i := strings.LastIndex(path, clientPrefix)
	if i < 0 {
		return "", errors.New("it must end in /client/ID, with the ID the agent printed")
	}
	id := path[i+len(clientPrefix):]
	if err := ValidID(id); err != nil {
		return "", err
	}
	return id, nil
}
