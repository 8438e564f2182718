//go:build js && wasm

package webterm

import (
	"bufio"
	"context"
	"errors"
	"io"
	"syscall/js"
)

// The page's file API, methods of a connection's handle (see Export):
//
//	uploadDir(cwd): Promise<{dir, fallback}>
//	    where uploads go: cwd when it is a directory in the job, else the
//	    session's start directory (fallback true)
//	upload({dir, name, size, conflict, read, progress}): {done, cancel}
//	    conflict: "ask" (done rejects with kind "exists"), "replace",
//	    "keep" (keep both: a free name); read(offset, n): Promise of a
//	    Uint8Array of the file's bytes there (empty at the end);
//	    progress(bytes); done: Promise<path written>
//	stat(path): Promise<{path, name, size}> of a regular file
//	download({path, write, progress}): {done, cancel}
//	    write(Uint8Array): Promise, resolved when the bytes are taken
//	    (the backpressure); done: Promise<bytes>
//
// Rejections are Errors with a kind: "exists", "cancelled", "closed" or
// "failed".
func (h *handle) fileMethods(o js.Value) {
	h.valued(o, "uploadDir", func(args []js.Value) js.Value {
		cwd := str(arg(args, 0))
		return h.promise(func(s *Session) (any, error) {
			dir, fallback, err := s.UploadDir(cwd)
			if err != nil {
				return nil, err
			}
			return map[string]any{"dir": dir, "fallback": fallback}, nil
		})
	})
	h.valued(o, "stat", func(args []js.Value) js.Value {
		p := str(arg(args, 0))
		return h.promise(func(s *Session) (any, error) {
			fi, err := s.StatFile(p)
			if err != nil {
				return nil, err
			}
			return map[string]any{"path": fi.Path, "name": fi.Name, "size": fi.Size}, nil
		})
	})
	h.valued(o, "upload", func(args []js.Value) js.Value { return h.upload(arg(args, 0)) })
	h.valued(o, "download", func(args []js.Value) js.Value { return h.download(arg(args, 0)) })
}

// valued sets a method of o that returns a value.
func (h *handle) valued(o js.Value, name string, fn func([]js.Value) js.Value) {
	f := js.FuncOf(func(_ js.Value, args []js.Value) any { return fn(args) })
	h.funcs = append(h.funcs, f)
	o.Set(name, f)
}

var conflicts = map[string]Conflict{"ask": ConflictAsk, "replace": ConflictReplace, "keep": ConflictKeepBoth}

func (h *handle) upload(o js.Value) js.Value {
	ctx, cancel := context.WithCancel(h.ctx)
	dir, name, size := str(o.Get("dir")), str(o.Get("name")), int64(o.Get("size").Float())
	how := conflicts[str(o.Get("conflict"))]
	src := &jsFile{read: o.Get("read"), size: size}
	progress := progressFunc(o.Get("progress"))
	done := h.promise(func(s *Session) (any, error) {
		defer cancel()
		return s.Upload(ctx, io.LimitReader(src, size), dir, name, how, progress)
	})
	return h.task(done, cancel)
}

func (h *handle) download(o js.Value) js.Value {
	ctx, cancel := context.WithCancel(h.ctx)
	p := str(o.Get("path"))
	dst := &jsWriter{write: o.Get("write")}
	progress := progressFunc(o.Get("progress"))
	done := h.promise(func(s *Session) (any, error) {
		defer cancel()
		bw := bufio.NewWriterSize(dst, 512<<10) // fewer, larger hand-overs to the page
		n, err := s.Download(ctx, p, bw, progress)
		if err == nil {
			err = bw.Flush()
		}
		return float64(n), err
	})
	return h.task(done, cancel)
}

// task is {done, cancel} for the page; cancel's function is released
// once done settles.
func (h *handle) task(done js.Value, cancel context.CancelFunc) js.Value {
	t := js.Global().Get("Object").New()
	c := js.FuncOf(func(js.Value, []js.Value) any { cancel(); return nil })
	var release js.Func
	release = js.FuncOf(func(js.Value, []js.Value) any { c.Release(); release.Release(); return nil })
	done.Call("then", release, release)
	t.Set("done", done)
	t.Set("cancel", c)
	return t
}

func progressFunc(v js.Value) func(int64) {
	if v.Type() != js.TypeFunction {
		return nil
	}
	return func(n int64) { v.Invoke(float64(n)) }
}

// promise runs fn with the session on its own goroutine (so it may await
// the page's promises) and settles a JavaScript promise with its result.
func (h *handle) promise(fn func(*Session) (any, error)) js.Value {
	var exec js.Func
	exec = js.FuncOf(func(_ js.Value, args []js.Value) any {
		resolve, reject := args[0], args[1]
		go func() {
			s := h.session()
			if s == nil {
				reject.Invoke(jsErr("closed", "not connected"))
				return
			}
			v, err := fn(s)
			if err != nil {
				reject.Invoke(jsErrOf(err, h.ctx.Err()))
				return
			}
			resolve.Invoke(v)
		}()
		return nil
	})
	p := js.Global().Get("Promise").New(exec) // runs exec at once
	exec.Release()
	return p
}

func jsErrOf(err, closed error) js.Value {
	var exists *ExistsError
	switch {
	case errors.As(err, &exists):
		e := jsErr("exists", err.Error())
		e.Set("path", exists.Path)
		return e
	case closed != nil:
		return jsErr("closed", "the session ended")
	case errors.Is(err, context.Canceled):
		return jsErr("cancelled", "cancelled")
	}
	return jsErr("failed", err.Error())
}

func jsErr(kind, msg string) js.Value {
	e := js.Global().Get("Error").New(msg)
	e.Set("kind", kind)
	return e
}

// jsFile reads a page's file through its read(offset, n) function, a
// chunk at a time: only one chunk is ever held here.
type jsFile struct {
	read js.Value
	size int64
	off  int64
	buf  []byte
}

const readChunk = 1 << 20

func (f *jsFile) Read(p []byte) (int, error) {
	if len(f.buf) == 0 {
		if f.off >= f.size {
			return 0, io.EOF
		}
		v, err := await(f.read.Invoke(float64(f.off), readChunk))
		if err != nil {
			return 0, err
		}
		f.buf = bytesFromJS(v)
		if len(f.buf) == 0 {
			return 0, io.ErrUnexpectedEOF // the file shrank
		}
		f.off += int64(len(f.buf))
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// jsWriter hands bytes to the page's write function and waits until the
// page has taken them.
type jsWriter struct{ write js.Value }

func (w *jsWriter) Write(p []byte) (int, error) {
	if _, err := await(w.write.Invoke(bytesToJS(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
