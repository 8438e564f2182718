package sshd

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
)

// Kept shells: every interactive shell the agent starts is a named shell
// whose terminal the agent holds, so it outlives the client that started
// it (a lost link, a closed laptop, ssh's ~.). Anyone may attach to it
// again (ssh -t ID attach [NAME]), several at once: writers' input goes
// to the shell in the order it arrives, observers only watch. The shell
// ends when its program exits, or when the server closes (the agent's
// lifetime, which counts kept shells, decides that).
//
// The output is read by one goroutine per shell into a bounded ring, and
// each attached client sends it from its own offset in the ring: a slow
// client never holds up the shell or the others; one that falls more
// than the ring behind skips ahead and is told. A shell with nobody
// attached waits in read(2) on its terminal: it costs no CPU.

// detachHint is how to leave a shell running, as shown to users.
const detachHint = "Enter ~ d"

// shell is one kept shell.
type shell struct {
	// Set at start.
	name    string
	started time.Time
	term    termFile
	sid     int    // the shell leads a session of its own
	release func() // the lifetime stops counting the shell

	refused atomic.Int64 // observer keystrokes kept from the shell

	inMu sync.Mutex // orders writes to the terminal

	mu      sync.Mutex
	out     *ring
	changed chan struct{}        // closed and replaced at each output and at the end
	clients map[*client]struct{} // attached now
	writer  *client              // the most recent writer: the window follows it
	size    ssh.Window
	nudged  bool      // redraw changed the terminal's size for a moment
	input   time.Time // last input from a writer (or the start)
	ended   bool
	code    int           // exit status, once ended
	done    chan struct{} // closed when ended
}

// termFile is the terminal's master side.
type termFile interface {
	io.ReadWriteCloser
	resize(w ssh.Window)
	// foreground reports whether a program other than the shell holds the
	// terminal's foreground (a full-screen program may be drawing).
	foreground(sid int) bool
}

// client is one attached SSH session.
type client struct {
	s        ssh.Session
	who      string // as shown in join and leave lines, and in ls
	observer bool
	conn     string     // its connection, as the journal names it
	win      ssh.Window // its window, under the shell's mutex
	told     bool       // an observer was told it is read-only
	refused  atomic.Int64
	// replayEnd is where the scroll-back replayed at attach ends; the
	// terminal queries in it are stale and are not sent.
	replayEnd int64
}

// shellNames keeps the shells of a Server by name.
type shellNames struct {
	mu     sync.Mutex
	seq    int
	shells []*shell // in the order they started
	closed bool     // the server is closing: no new shells

	wg sync.WaitGroup // the shells' goroutines and the clients' input readers
}

// add registers a new shell and names it. closing reports that the
// server is closing: the caller hangs the shell up.
func (n *shellNames) add(sh *shell) (closing bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seq++
	sh.name = strconv.Itoa(n.seq)
	n.shells = append(n.shells, sh)
	return n.closed
}

// close hangs up every kept shell, and any started from now on: the
// server is closing.
func (n *shellNames) close() {
	n.mu.Lock()
	n.closed = true
	shells := slices.Clone(n.shells)
	n.mu.Unlock()
	for _, sh := range shells {
		n.hangUp(sh)
	}
}

func (n *shellNames) remove(sh *shell) {
	n.mu.Lock()
	n.shells = slices.DeleteFunc(n.shells, func(s *shell) bool { return s == sh })
	n.mu.Unlock()
}

// find returns the shell called name, or the most recent one for "".
func (n *shellNames) find(name string) (*shell, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.shells) == 0 {
		return nil, fmt.Errorf("no shell is running here to attach to; start one with: ssh -t ID")
	}
	if name == "" {
		return n.shells[len(n.shells)-1], nil
	}
	for _, sh := range n.shells {
		if sh.name == name {
			return sh, nil
		}
	}
	names := make([]string, len(n.shells))
	for i, sh := range n.shells {
		names[i] = sh.name
	}
	return nil, fmt.Errorf("no shell %q; running: %s (ssh ID ls lists them)", name, strings.Join(names, ", "))
}

// list returns the shells running now.
func (n *shellNames) list() []*shell {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.shells)
}

// output appends what the shell printed, and wakes the clients.
func (sh *shell) output(p []byte) {
	sh.mu.Lock()
	sh.out.write(p)
	close(sh.changed)
	sh.changed = make(chan struct{})
	sh.mu.Unlock()
}

// say puts one line into the shell's screen, for everyone attached and
// for the scroll-back.
func (sh *shell) say(line string) {
	sh.output([]byte("\r\n[converge] " + line + "\r\n"))
}

// end marks the shell ended with its exit status, and wakes the clients.
func (sh *shell) end(code int) {
	sh.mu.Lock()
	sh.ended, sh.code = true, code
	close(sh.done)
	close(sh.changed)
	sh.changed = make(chan struct{})
	sh.mu.Unlock()
}

// join attaches c and returns the offset it reads from: the start of the
// scroll-back (from its first full line once the ring has wrapped), or
// the very start for the shell's creator. Everyone attached is told.
func (sh *shell) join(c *client, creator bool) (off int64, ok bool) {
	sh.mu.Lock()
	if sh.ended {
		sh.mu.Unlock()
		return 0, false
	}
	sh.clients[c] = struct{}{}
	if !creator {
		c.replayEnd = sh.out.end
	}
	off = sh.out.start()
	if !creator && off > 0 {
		off = sh.out.lineStart()
	}
	sh.mu.Unlock()
	if !creator {
		role := ""
		if c.observer {
			role = ", read-only"
		}
		sh.say(fmt.Sprintf("%s joined shell %s%s", c.who, sh.name, role))
	}
	return off, true
}

// leave detaches c; everyone still attached is told (and a full-screen
// program the line was written over is asked to redraw).
func (sh *shell) leave(c *client, how string) {
	sh.mu.Lock()
	delete(sh.clients, c)
	if sh.writer == c {
		sh.writer = nil
	}
	ended, others := sh.ended, len(sh.clients)
	sh.mu.Unlock()
	if !ended {
		sh.say(fmt.Sprintf("%s %s", c.who, how))
		if others > 0 {
			sh.redraw()
		}
	}
}

// window records c's window size; the terminal takes it when c is the
// most recent writer.
func (sh *shell) window(c *client, w ssh.Window) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c.win = w
	if sh.writer == c && !sh.ended {
		sh.size = w
		sh.term.resize(w)
	}
}

// write sends a writer's input to the shell, whole and in the order
// writes arrive. The writer's window becomes the terminal's: the person
// typing is the one reading the screen, as tmux's window-size "latest".
func (sh *shell) write(c *client, p []byte) {
	sh.mu.Lock()
	if _, ok := sh.clients[c]; !ok || sh.ended {
		sh.mu.Unlock()
		return
	}
	if sh.writer != c {
		sh.writer = c
		if c.win != sh.size {
			sh.size = c.win
			sh.term.resize(c.win)
		}
	}
	if len(p) > 0 {
		sh.unnudgeLocked()
	}
	sh.input = time.Now()
	sh.mu.Unlock()
	if len(p) == 0 {
		return
	}
	sh.inMu.Lock()
	sh.term.Write(p)
	sh.inMu.Unlock()
}

// redraw asks a full-screen program to draw its screen again, for a
// client that just attached: replayed bytes show a shell's screen, but
// not one that a program drew with cursor moves over a longer time. The
// terminal's size changes by one column and back (SIGWINCH each time),
// which vim, less, top and the like answer with a full redraw. A shell
// at its prompt is left alone.
func (sh *shell) redraw() {
	sh.mu.Lock()
	if sh.ended || !sh.term.foreground(sh.sid) {
		sh.mu.Unlock()
		return
	}
	w := sh.size
	w.Width++
	sh.term.resize(w)
	sh.nudged = true
	sh.mu.Unlock()
	time.AfterFunc(redrawNudge, func() {
		sh.mu.Lock()
		sh.unnudgeLocked()
		sh.mu.Unlock()
	})
}

// unnudgeLocked gives the terminal its size back after redraw, if not
// done yet: at the latest before the next input reaches the shell.
func (sh *shell) unnudgeLocked() {
	if sh.nudged && !sh.ended {
		sh.term.resize(sh.size)
	}
	sh.nudged = false
}

// redrawNudge is how long the terminal keeps the nudged size: long
// enough for the program to see a change, short enough not to be seen.
const redrawNudge = 150 * time.Millisecond
