package ctl

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// ioTimeout bounds reading a request and writing its response.
const ioTimeout = 10 * time.Second

// Caller is the session a request came from.
type Caller struct {
	Conn    string // the SSH connection (journal.Entry.Conn)
	Session string // the session within it
}

// Call is one run of a command.
type Call struct {
	Args   []string
	Dir    string // where the command ran (its working directory), for relative paths
	Caller Caller
	Stdout io.Writer
	Stderr io.Writer
	// Exit is the status the command exits with when Run returns nil.
	Exit int
}

// Command is one subcommand of `converge`.
type Command struct {
	Name    string // converge NAME
	Usage   string // the arguments, for the help ("[--json]"); may be empty
	Summary string // one line for `converge --help`
	// Run does the work, writing to c.Stdout and c.Stderr, which reach
	// the user when it returns (as they come, with Stream). An error is
	// printed as "converge NAME: error" and the command exits 1 (or
	// c.Exit when set). ctx ends when the agent shuts down. Run should
	// return within seconds unless Stream is set: the command gives up
	// after 30 s of silence.
	Run func(ctx context.Context, c *Call) error
	// Stream sends what Run writes to the command as it comes, and lets
	// the command wait for Run as long as it takes (a retried build).
	// False: Run answers at once; its output is sent when it returns.
	Stream bool
}

// Server answers the converge command on a Unix socket. Create it with
// Listen; Close stops it and waits for its requests.
type Server struct {
	log  *slog.Logger
	path string
	ln   net.Listener
	cmds map[string]Command
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu       sync.Mutex
	sessions map[[32]byte]Caller // by the hash of the secret
}

// Listen listens on the socket "ctl" in dir, which must be private
// (statedir.Make), and serves cmds until Close. A socket path longer
// than the OS allows (about 100 bytes) is put in a fresh private
// temporary folder instead.
func Listen(dir string, cmds []Command, log *slog.Logger) (*Server, error) {
	path := filepath.Join(dir, "ctl")
	if len(path) > maxSocketPath {
		tmp, err := os.MkdirTemp("", "converge-")
		if err != nil {
			return nil, fmt.Errorf("converge command: %w", err)
		}
		path = filepath.Join(tmp, "ctl")
	}
	os.Remove(path) // a socket left by an earlier run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("converge command: listen on %s: %w", path, err)
	}
	os.Chmod(path, 0o600)
	s := &Server{log: log, path: path, ln: ln, cmds: map[string]Command{}, sessions: map[[32]byte]Caller{}}
	for _, c := range cmds {
		s.cmds[c.Name] = c
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// maxSocketPath is the longest socket path used as is: sun_path holds
// 104 bytes on macOS and the BSDs, 108 on Linux.
const maxSocketPath = 100

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops listening, ends running commands' contexts, and waits for
// them. It removes the socket.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.stop()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

// Session registers a session and returns what its environment needs
// (EnvSocket and EnvSession) and the release that forgets the secret when
// the session ends.
func (s *Server) Session(c Caller) (env []string, release func()) {
	b := make([]byte, 32)
	rand.Read(b)
	secret := hex.EncodeToString(b)
	key := sha256.Sum256([]byte(secret))
	s.mu.Lock()
	s.sessions[key] = c
	s.mu.Unlock()
	return []string{EnvSocket + "=" + s.path, EnvSession + "=" + secret}, func() {
		s.mu.Lock()
		delete(s.sessions, key)
		s.mu.Unlock()
	}
}

func (s *Server) caller(secret string) (Caller, bool) {
	key := sha256.Sum256([]byte(secret))
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.sessions[key]
	return c, ok
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("converge command: accept failed; the command stops working", "error", err)
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer conn.Close()
			s.serve(conn)
		}()
	}
}

// serve answers one request on conn.
func (s *Server) serve(conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(conn, maxRequest), maxRequest).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return
	}
	var req Request
	var resp Response
	out := &responder{conn: conn}
	if err := json.Unmarshal(line, &req); err != nil {
		resp = Response{Stderr: "converge: bad request: " + err.Error() + "\n", Exit: 2}
	} else {
		resp = s.run(req, out)
	}
	out.send(resp)
}

// run runs the command req names for the session its secret belongs to;
// a streaming command's output goes to out as it comes.
func (s *Server) run(req Request, out *responder) Response {
	caller, ok := s.caller(req.Secret)
	if !ok {
		return Response{Stderr: "converge: this session is not known to the agent (it ended, or " + EnvSession + " was changed)\n", Exit: 2}
	}
	if req.Command == "" || req.Command == "help" || req.Command == "--help" || req.Command == "-h" {
		return Response{Stdout: s.help()}
	}
	cmd, ok := s.cmds[req.Command]
	if !ok {
		return Response{Stderr: fmt.Sprintf("converge: no command %q; converge --help lists them\n", req.Command), Exit: 2}
	}
	var stdout, stderr bytes.Buffer
	call := &Call{Args: req.Args, Dir: req.Dir, Caller: caller, Stdout: &stdout, Stderr: &stderr}
	if cmd.Stream {
		call.Stdout, call.Stderr = out.stream(false), out.stream(true)
		defer out.beat()()
	}
	if err := cmd.Run(s.ctx, call); err != nil {
		fmt.Fprintf(call.Stderr, "converge %s: %v\n", cmd.Name, err)
		if call.Exit == 0 {
			call.Exit = 1
		}
	}
	return Response{Stdout: stdout.String(), Stderr: stderr.String(), Exit: call.Exit}
}

// help lists the commands.
func (s *Server) help() string {
	var b strings.Builder
	b.WriteString("converge talks to the Converge agent that serves this session.\n\nUsage: converge COMMAND [ARGS]\n\nCommands:\n")
	names := make([]string, 0, len(s.cmds))
	for n := range s.cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(&b, 2, 8, 2, ' ', 0)
	for _, n := range names {
		c := s.cmds[n]
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.Name, c.Usage, c.Summary)
	}
	fmt.Fprintf(tw, "  help\tthis list\n")
	tw.Flush()
	return b.String()
}
