package ctl

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// Main is the converge command: it sends args (a command and its
// arguments) to the agent named by the environment (EnvSocket,
// EnvSession), prints the answer to stdout and stderr, and returns the
// exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	sock, secret := os.Getenv(EnvSocket), os.Getenv(EnvSession)
	if sock == "" || secret == "" {
		fmt.Fprintf(stderr, "converge: not in a Converge session (%s and %s are not set).\n"+
			"This command works inside an SSH session of a Converge agent.\n", EnvSocket, EnvSession)
		return 2
	}
	req := Request{Secret: secret}
	req.Dir, _ = os.Getwd()
	if len(args) > 0 {
		req.Command, req.Args = args[0], args[1:]
	}
	resp, err := Stream(sock, req, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "converge: %v\n", err)
		return 1
	}
	return resp.Exit
}

// sendTimeout bounds a request, and the silence between the parts of a
// streaming answer (the agent beats every streamBeat).
const sendTimeout = 30 * time.Second

// Send sends req to the agent at the socket sock and returns its answer,
// the output of a streaming command included.
func Send(sock string, req Request) (Response, error) {
	var out, errOut strings.Builder
	resp, err := Stream(sock, req, &out, &errOut)
	resp.Stdout, resp.Stderr = out.String(), errOut.String()
	return resp, err
}

// Stream sends req to the agent at the socket sock, writes the output of
// its answer to stdout and stderr as it comes, and returns the last
// response (its exit status). It gives up on an agent silent for
// sendTimeout; a streaming command is never silent that long.
func Stream(sock string, req Request, stdout, stderr io.Writer) (Response, error) {
	var resp Response
	conn, err := net.DialTimeout("unix", sock, sendTimeout)
	if err != nil {
		return resp, fmt.Errorf("cannot reach the agent (did it end?): %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(sendTimeout))
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return resp, fmt.Errorf("send to the agent: %w", err)
	}
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil && len(line) == 0 {
			return resp, fmt.Errorf("no answer from the agent: %w", err)
		}
		resp = Response{}
		if err := json.Unmarshal(line, &resp); err != nil {
			return resp, fmt.Errorf("bad answer from the agent: %w", err)
		}
		io.WriteString(stdout, resp.Stdout)
		io.WriteString(stderr, resp.Stderr)
		if !resp.More {
			return resp, nil
		}
		conn.SetReadDeadline(time.Now().Add(sendTimeout))
	}
}
