package ctl

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
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
	resp, err := Send(sock, req)
	if err != nil {
		fmt.Fprintf(stderr, "converge: %v\n", err)
		return 1
	}
	io.WriteString(stdout, resp.Stdout)
	io.WriteString(stderr, resp.Stderr)
	return resp.Exit
}

// sendTimeout bounds a whole request; commands answer at once.
const sendTimeout = 30 * time.Second

// Send sends req to the agent at the socket sock and returns its answer.
func Send(sock string, req Request) (Response, error) {
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
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return resp, fmt.Errorf("no answer from the agent: %w", err)
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return resp, fmt.Errorf("bad answer from the agent: %w", err)
	}
	return resp, nil
}
