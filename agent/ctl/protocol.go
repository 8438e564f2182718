// Package ctl is the `converge` command inside a job's sessions: the
// agent's side (a Server on a Unix socket in the agent's private state
// folder, running the commands of a table) and the command's side (Main,
// which sends one request and prints the answer).
//
// Every session the agent starts gets, in its environment, the socket's
// path and a secret of its own (see Server.Session); the command sends
// the secret with each request, so only sessions of this agent can use
// it, and the server knows which session called. The socket lives in a
// 0700 folder, so other users on the machine cannot even connect. It is
// the one socket the agent listens on, and it is not a network socket.
//
// The protocol is one JSON object per line: a Request from the command,
// a Response from the agent, then the connection closes.
//
// It is not where commands are defined: the agent passes its table of
// Commands to Listen (package agent, commands.go).
package ctl

// Environment variables a session gets, which Main reads.
const (
	EnvSocket  = "CONVERGE_SOCKET"  // the agent's socket
	EnvSession = "CONVERGE_SESSION" // this session's secret
	EnvCommand = "CONVERGE_CMD"     // the full path of the converge command
)

// Request is what the converge command sends.
type Request struct {
	Secret  string   `json:"secret"`
	Command string   `json:"command"` // "" or "help": the list of commands
	Args    []string `json:"args,omitempty"`
	Dir     string   `json:"dir,omitempty"` // the command's working directory
}

// Response is what the agent answers: what to print and the exit status.
// A command whose output streams (Command.Stream) sends it as responses
// with More set, as it comes, and a response with More set and nothing
// in it every streamBeat while it is quiet; the last response has More
// false.
type Response struct {
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
	Exit   int    `json:"exit"`
	More   bool   `json:"more,omitempty"`
}

// maxRequest bounds a request line.
const maxRequest = 64 << 10
