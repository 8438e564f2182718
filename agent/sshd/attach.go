package sshd

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gliderlabs/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// The commands of kept shells that a client runs as `ssh ID attach
// [NAME]` and `ssh ID ls`: the agent answers them itself, they start no
// program. Any other command line (`ls -l`, `command ls`) runs in the
// shell as always.

// shellCommand answers s when its command line is one of the agent's
// own; ok is false when it is not.
func (d *Server) shellCommand(s ssh.Session) (code int, ok bool) {
	f := strings.Fields(s.RawCommand())
	switch {
	case len(f) == 1 && f[0] == "ls":
		d.listShells(s)
		return 0, true
	case len(f) >= 1 && len(f) <= 2 && f[0] == "attach":
		name := ""
		if len(f) == 2 {
			name = f[1]
		}
		return d.attachCommand(s, name), true
	}
	return 0, false
}

// attachCommand attaches s to the shell called name (the most recent
// when ""), until the shell ends, the client leaves or detaches.
func (d *Server) attachCommand(s ssh.Session, name string) int {
	sh, err := d.shells.find(name)
	if err != nil {
		fmt.Fprintf(s.Stderr(), "converge: %v\r\n", strings.ReplaceAll(err.Error(), " ID", " "+d.id()))
		return 1
	}
	if !hasPty(s) {
		fmt.Fprintf(s.Stderr(), "converge: attach needs a terminal: ssh -t %s attach %s\n", d.id(), sh.name)
		return 2
	}
	p := d.participant(s.Context())
	c := &client{s: s, who: p.name, observer: p.observer, conn: p.conn}
	code, ended := d.attachClient(sh, c, false)
	if !ended {
		return 0
	}
	return code
}

// listShells answers ssh ID ls.
func (d *Server) listShells(s ssh.Session) { d.ListShells(s) }

// ListShells writes the kept shells to w, for people: name, size, idle
// time (since the last input), who is attached; and how to attach.
func (d *Server) ListShells(w io.Writer) {
	shells := d.Shells()
	if len(shells) == 0 {
		fmt.Fprintf(w, "No shell is running. Start one with: ssh -t %s\n", d.id())
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tIDLE\tATTACHED")
	for _, sh := range shells {
		who := strings.Join(sh.Attached, "; ")
		if who == "" {
			who = "nobody"
		}
		fmt.Fprintf(tw, "%s\t%dx%d\t%s\t%s\n", sh.Name, sh.Cols, sh.Rows, sh.Idle.Round(time.Second), who)
	}
	tw.Flush()
	fmt.Fprintf(w, "Attach: ssh -t %s attach NAME; detach: %s.\n", d.id(), detachHint)
}

// attachClient runs c on sh until the shell ends (ended true, with its
// exit status), the client leaves, or it types the detach keys.
func (d *Server) attachClient(sh *shell, c *client, creator bool) (code int, ended bool) {
	off, ok := sh.join(c, creator)
	if !ok {
		return sh.exitCode(), true
	}
	role := ""
	if c.observer {
		role = ", read-only"
	}
	d.cfg.Journal.Append(journal.Entry{Kind: journal.KindAttach, Conn: c.conn, Note: "shell " + sh.name + role})
	defer func() {
		if n := c.refused.Load(); n > 0 {
			d.cfg.Journal.Append(journal.Entry{Kind: journal.KindReadOnlyKeys, Conn: c.conn,
				Note: fmt.Sprintf("%d keystrokes refused in shell %s", n, sh.name)})
		}
		d.cfg.Journal.Append(journal.Entry{Kind: journal.KindDetach, Conn: c.conn, Note: "shell " + sh.name})
	}()
	ptyReq, winCh, _ := c.s.Pty()
	sh.window(c, ptyReq.Window)
	if !c.observer {
		sh.write(c, nil) // the window follows whoever attaches to write
	}
	stopWin := followWindow(winCh, func(w ssh.Window) { sh.window(c, w) })
	defer stopWin()
	detached := make(chan struct{})
	d.shells.wg.Add(1)
	go func() { defer d.shells.wg.Done(); readInput(sh, c, detached) }()
	if !creator {
		sh.redraw()
	}
	code, ended = c.pump(sh, off, detached)
	switch {
	case ended:
	case isClosed(detached):
		sh.leave(c, "detached")
		c.s.Write([]byte(resetModes + fmt.Sprintf("\r\n[converge] detached from shell %s; it keeps running. Back with: ssh -t %s attach %s\r\n", sh.name, d.id(), sh.name)))
	default:
		sh.leave(c, "left")
	}
	return code, ended
}

// resetModes undoes what a full-screen program may have left set in the
// client's terminal when it detaches: the alternate screen, application
// cursor keys and keypad, a hidden cursor, colours, bracketed paste and
// mouse reporting.
const resetModes = "\x1b[?1049l\x1b[?1l\x1b>\x1b[?25h\x1b[0m\x1b[?2004l\x1b[?1000l\x1b[?1002l\x1b[?1006l"

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (sh *shell) exitCode() int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.code
}

// pump sends the shell's output to c from offset off until the shell has
// ended and all of it is sent (ended true, with the exit status), the
// client's session ends, or detached closes.
func (c *client) pump(sh *shell, off int64, detached <-chan struct{}) (code int, ended bool) {
	gone := c.s.Context().Done()
	for {
		bp := sendBufs.Get().(*[]byte)
		buf := *bp
		sh.mu.Lock()
		p := buf
		if off < c.replayEnd {
			p = buf[:min(int64(len(buf)), c.replayEnd-off)]
		}
		n, next, skipped := sh.out.readAt(off, p)
		changed, ended, code := sh.changed, sh.ended, sh.code
		sh.mu.Unlock()
		if skipped > 0 {
			fmt.Fprintf(c.s, "\r\n[converge] %d bytes of output skipped: this terminal fell behind\r\n", skipped)
		}
		if n > 0 {
			out := buf[:n]
			if off < c.replayEnd {
				out = stripQueries(out)
			}
			_, err := c.s.Write(out)
			sendBufs.Put(bp)
			if err != nil {
				return 0, false
			}
			off = next
			continue
		}
		sendBufs.Put(bp)
		if ended {
			return code, true
		}
		select {
		case <-changed:
		case <-gone:
			return 0, false
		case <-detached:
			return 0, false
		}
	}
}

// sendBufs hold output on its way to a client, only while it is sent: a
// client waiting for output holds no buffer.
var sendBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// terminalQuery matches what programs send to ask the terminal something
// (device attributes, cursor position, version, modes, colours,
// capabilities). In replayed output such a question is stale: the
// terminal of whoever attaches would answer it, and the answer would
// reach the program as keystrokes.
var terminalQuery = regexp.MustCompile(`\x1b\[[0-9;?>=]*[cn]|\x1b\[[>?][0-9;]*[qu]|\x1b\[\??[0-9;]*\$p|\x1b\][0-9]+;\?(?:\x07|\x1b\\)|\x1bP[+$]q[^\x1b]*\x1b\\`)

// stripQueries removes terminal queries from replayed output.
func stripQueries(p []byte) []byte { return terminalQuery.ReplaceAll(p, nil) }

// readInput reads c's keystrokes until its session ends or it detaches
// (closing detached): a writer's go to the shell, an observer's are
// counted and refused, with one line telling it so.
func readInput(sh *shell, c *client, detached chan<- struct{}) {
	var f detachFilter
	buf := make([]byte, 1<<10) // keys; a paste comes in several reads
	for {
		n, err := c.s.Read(buf)
		if n > 0 {
			p, keys, detach := f.filter(buf[:n])
			if c.observer {
				sh.refuse(c, keys)
			} else if len(p) > 0 {
				sh.write(c, p)
			}
			if detach {
				close(detached)
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// refuse counts n keystrokes of observer c and tells it, once per
// attach, that it is read-only.
func (sh *shell) refuse(c *client, n int) {
	if n == 0 {
		return
	}
	sh.refused.Add(int64(n))
	c.refused.Add(int64(n))
	if !c.told {
		c.told = true
		c.s.Write([]byte("\r\n[converge] read-only: you are an observer here; your keystrokes do not reach the shell (detach: " + detachHint + ")\r\n"))
	}
}

// detachFilter finds the detach keys in a client's input: Enter, ~, d
// (after Enter or at the start, as ssh's own ~. escape). A ~ at the
// start of a line is held until the next key; ~~ sends one ~. Escape
// sequences (arrow keys, and the answers a terminal sends to queries in
// replayed output, such as a cursor position report) neither start nor
// end a line, and are not counted as keys.
type detachFilter struct {
	midLine bool // the last key was not Enter
	tilde   bool // a ~ at the start of a line is held
	esc     int  // 0: no escape sequence; 1: after ESC; 2: in a CSI sequence
}

func (f *detachFilter) filter(p []byte) (out []byte, keys int, detach bool) {
	out = make([]byte, 0, len(p)+1)
	for _, b := range p {
		if f.escape(b) {
			out = append(out, b)
			continue
		}
		keys++
		if f.tilde {
			f.tilde = false
			if b == 'd' {
				return out, keys, true
			}
			out = append(out, '~')
			if b == '~' {
				f.midLine = true
				continue
			}
		} else if !f.midLine && b == '~' {
			f.tilde = true
			continue
		}
		out = append(out, b)
		f.midLine = b != '\r' && b != '\n'
	}
	return out, keys, false
}

// escape follows escape sequences, and reports whether b is part of one.
func (f *detachFilter) escape(b byte) bool {
	switch {
	case f.esc == 0 && b == 0x1b:
		f.esc = 1
	case f.esc == 1 && (b == '[' || b == 'O'):
		f.esc = 2
	case f.esc == 1:
		f.esc = 0
	case f.esc == 2 && b >= 0x40 && b <= 0x7e:
		f.esc = 0
	case f.esc == 0:
		return false
	}
	return true
}

// ShellInfo describes a kept shell.
type ShellInfo struct {
	Name     string
	Cols     int
	Rows     int
	Idle     time.Duration // since the last input from a writer
	Attached []string      // who is attached; observers marked (read-only)
	// Refused counts the observers' keystrokes kept from the shell.
	Refused int64
}

// Shells lists the kept shells running now, oldest first.
func (d *Server) Shells() []ShellInfo {
	var out []ShellInfo
	now := time.Now()
	for _, sh := range d.shells.list() {
		sh.mu.Lock()
		info := ShellInfo{Name: sh.name, Cols: sh.size.Width, Rows: sh.size.Height, Idle: now.Sub(sh.input), Refused: sh.refused.Load()}
		for c := range sh.clients {
			w := c.who
			if c.observer {
				w += " (read-only)"
			}
			info.Attached = append(info.Attached, w)
		}
		sh.mu.Unlock()
		slices.Sort(info.Attached)
		out = append(out, info)
	}
	return out
}
