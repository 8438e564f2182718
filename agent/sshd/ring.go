package sshd

import "bytes"

// scrollBack is how much of a kept shell's output the agent keeps for
// whoever attaches next: enough for the screen and a good deal of
// history, bounded so that a shell printing without end costs no more.
const scrollBack = 1 << 20

// ring is the scroll-back of a kept shell: the last len(buf) bytes of its
// output, each numbered by its offset since the shell started, so that
// every attached client reads at its own offset and nobody's slowness
// holds the shell up. It is not safe for concurrent use: the shell's
// mutex guards it.
type ring struct {
	buf []byte // grows up to its capacity, then wraps
	end int64  // offset after the last byte written
}

func newRing(size int) *ring { return &ring{buf: make([]byte, 0, size)} }

// start is the offset of the oldest byte still held.
func (r *ring) start() int64 { return r.end - int64(len(r.buf)) }

// write appends p, dropping the oldest bytes beyond the capacity. While
// the buffer grows, a byte's index is its offset; once full, offset
// modulo the capacity.
func (r *ring) write(p []byte) {
	c := int64(cap(r.buf))
	if int64(len(p)) > c {
		r.end += int64(len(p)) - c
		p = p[int64(len(p))-c:]
	}
	if int64(len(r.buf)) == r.end && r.end+int64(len(p)) <= c {
		r.buf = append(r.buf, p...)
		r.end += int64(len(p))
		return
	}
	r.buf = r.buf[:c]
	for len(p) > 0 {
		n := copy(r.buf[r.end%c:], p)
		r.end += int64(n)
		p = p[n:]
	}
}

// readAt copies bytes from offset off into p and returns how many, and
// the offset to read from next. An offset older than start reads from
// start: the bytes in between are gone (skipped reports how many).
func (r *ring) readAt(off int64, p []byte) (n int, next int64, skipped int64) {
	if s := r.start(); off < s {
		skipped, off = s-off, s
	}
	if off >= r.end || len(p) == 0 {
		return 0, off, skipped
	}
	c := int64(cap(r.buf))
	if int64(len(r.buf)) < c { // not yet wrapped: offsets are indexes
		n = copy(p, r.buf[off:])
		return n, off + int64(n), skipped
	}
	i := off % c
	avail := r.end - off
	seg := r.buf[i:min(c, i+avail)]
	n = copy(p, seg)
	return n, off + int64(n), skipped
}

// lineStart is the offset just after the first newline in the oldest
// 4 KiB held, or start when there is none: replay after the ring has
// wrapped begins at a line rather than inside an escape sequence or a
// character.
func (r *ring) lineStart() int64 {
	p := make([]byte, 4<<10)
	off := r.start()
	n, _, _ := r.readAt(off, p)
	if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
		return off + int64(i) + 1
	}
	return off
}
