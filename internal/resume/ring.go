package resume

// ring is a byte queue holding at most max bytes. Its storage grows in
// powers of two as needed, so a quiet stream costs little memory and a
// busy one at most max (rounded up to a power of two).
type ring struct {
	buf      []byte
	start, n int
	max      int
}

func (r *ring) len() int  { return r.n }
func (r *ring) free() int { return r.max - r.n }

// write appends as much of p as fits and returns how much it took.
func (r *ring) write(p []byte) int {
	if len(p) > r.free() {
		p = p[:r.free()]
	}
	if len(p) == 0 {
		return 0
	}
	if r.n+len(p) > len(r.buf) {
		r.grow(r.n + len(p))
	}
	end := (r.start + r.n) % len(r.buf)
	k := copy(r.buf[end:], p)
	copy(r.buf, p[k:])
	r.n += len(p)
	return len(p)
}

func (r *ring) grow(need int) {
	size := max(len(r.buf), 4096)
	for size < need {
		size *= 2
	}
	nb := make([]byte, size)
	r.peek(0, nb[:r.n])
	r.buf, r.start = nb, 0
}

// peek copies the bytes from offset off (0 is the oldest byte) into p and
// returns how many it copied.
func (r *ring) peek(off int, p []byte) int {
	if off >= r.n {
		return 0
	}
	if len(p) > r.n-off {
		p = p[:r.n-off]
	}
	i := (r.start + off) % len(r.buf)
	k := copy(p, r.buf[i:])
	copy(p[k:], r.buf)
	return len(p)
}

// discard drops the n oldest bytes.
func (r *ring) discard(n int) {
	n = min(n, r.n)
	r.n -= n
	if r.n == 0 {
		r.start = 0
		return
	}
	r.start = (r.start + n) % len(r.buf)
}

// read moves the oldest bytes into p.
func (r *ring) read(p []byte) int {
	n := r.peek(0, p)
	r.discard(n)
	return n
}
