// Files for the browser terminal: uploads (the #upload button, or files
// dropped on the terminal) and downloads the job offers with `converge
// get`. Both go over SFTP on the page's own SSH connection (package
// webterm), so they cross the relay encrypted, like the shell.
//
// Where uploads go: the shell's directory, which bash reports with OSC 7
// (ESC ] 7 ; file://HOST/PATH BEL) before each prompt; without it, the
// session's start directory, and the page says so.
//
// Downloads: the job prints ESC ] 5379 ; get ; BASE64(PATH) BEL (see
// docs/protocol.md); the page offers the file and, when the user says
// so, streams it to the browser's downloads through a service worker
// (sw.js), never holding the whole file.
"use strict";
(window.convergeTerminalParts = window.convergeTerminalParts || []).push(function (part) {
  var $ = part.$, app = part.app, list = $("transfers");
  var cwd = "", cwdHost = null;

  part.term.parser.registerOscHandler(7, function (data) {
    var m = /^file:\/\/([^\/]*)(\/.*)$/.exec(data);
    if (!m) return true;
    if (cwdHost === null) cwdHost = m[1];
    if (m[1] !== cwdHost) return true; // a shell on another machine (ssh from the job)
    try { cwd = decodeURIComponent(m[2]); } catch (e) { cwd = m[2]; }
    app.setAttribute("data-cwd", cwd);
    return true;
  });
  part.term.parser.registerOscHandler(5379, function (data) {
    var f = data.split(";");
    if (f[0] === "get" && f.length === 2) offer(decodePath(f[1]));
    return true;
  });

  function decodePath(b64) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); }));
    } catch (e) { return ""; }
  }

  // A row in the transfers list; its data-state is for people and tests.
  function row(kind, text) {
    var r = document.createElement("div");
    r.className = "transfer";
    r.setAttribute("data-kind", kind);
    r.innerHTML = '<span class="what"></span> <progress max="1" value="0"></progress> ' +
      '<span class="pct"></span> <span class="ask" hidden></span> <button type="button" class="cancel">Cancel</button>';
    r.querySelector(".what").textContent = text;
    list.appendChild(r);
    list.hidden = false;
    return r;
  }
  function setRow(r, state, text) {
    r.setAttribute("data-state", state);
    if (text) r.querySelector(".what").textContent = text;
    r.querySelector(".cancel").hidden = state !== "running";
  }
  function progress(r, size) {
    var bar = r.querySelector("progress"), pct = r.querySelector(".pct");
    bar.max = size || 1;
    return function (n) {
      bar.value = n;
      r.setAttribute("data-bytes", n);
      pct.textContent = size ? Math.floor(100 * n / size) + "%" : n + " B";
    };
  }
  // ask shows choices and resolves with the one clicked.
  function ask(r, question, choices) {
    var box = r.querySelector(".ask");
    box.textContent = question + " ";
    r.setAttribute("data-state", "ask");
    box.hidden = false;
    return new Promise(function (resolve) {
      Object.keys(choices).forEach(function (c) {
        var b = document.createElement("button");
        b.type = "button";
        b.setAttribute("data-choice", c);
        b.textContent = choices[c];
        b.addEventListener("click", function () { box.hidden = true; resolve(c); });
        box.appendChild(b);
      });
    });
  }
  function size(n) {
    var u = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }

  // Uploads.
  var input = $("upload-input"), queue = Promise.resolve();
  $("upload").addEventListener("click", function () { input.click(); });
  input.addEventListener("change", function () { upload(Array.prototype.slice.call(input.files)); input.value = ""; });
  var target = $("term");
  target.addEventListener("dragover", function (ev) {
    if (ev.dataTransfer && Array.prototype.indexOf.call(ev.dataTransfer.types, "Files") >= 0) {
      ev.preventDefault();
      ev.dataTransfer.dropEffect = "copy";
      app.classList.add("dropping");
    }
  });
  target.addEventListener("dragleave", function () { app.classList.remove("dropping"); });
  target.addEventListener("drop", function (ev) {
    app.classList.remove("dropping");
    if (!ev.dataTransfer || !ev.dataTransfer.files.length) return;
    ev.preventDefault();
    upload(Array.prototype.slice.call(ev.dataTransfer.files));
  });

  function upload(files) {
    var h = part.handle();
    if (!h || !files.length) {
      if (files.length) part.note("Connect first: files go over the session's own connection");
      return;
    }
    h.uploadDir(cwd).then(function (where) {
      $("upload-where").textContent = where.fallback ?
        "The shell did not report its directory (OSC 7), so files go to the session's start directory: " + where.dir :
        "Files go to the shell's directory: " + where.dir;
      $("upload-where").hidden = false;
      files.forEach(function (f) {
        var r = row("upload", f.name + " → " + where.dir);
        r.setAttribute("data-name", f.name);
        setRow(r, "queued");
        queue = queue.then(function () { return uploadOne(h, f, where.dir, r, "ask"); });
      });
    }, function (e) { part.note("Cannot upload: " + e.message); });
  }

  function uploadOne(h, f, dir, r, conflict) {
    setRow(r, "running");
    var t = h.upload({
      dir: dir, name: f.name, size: f.size, conflict: conflict, progress: progress(r, f.size),
      read: function (off, n) {
        return f.slice(off, off + n).arrayBuffer().then(function (b) { return new Uint8Array(b); });
      },
    });
    r.querySelector(".cancel").onclick = function () { t.cancel(); };
    return t.done.then(function (path) {
      setRow(r, "done", "Uploaded " + f.name + " (" + size(f.size) + ") to " + path);
      r.setAttribute("data-path", path);
    }, function (e) {
      if (e.kind === "exists") {
        return ask(r, e.path + " exists:", { replace: "Replace", keep: "Keep both", skip: "Skip" }).then(function (c) {
          if (c === "skip") return setRow(r, "skipped", "Skipped " + f.name + ": " + e.path + " exists");
          return uploadOne(h, f, dir, r, c);
        });
      }
      setRow(r, e.kind === "cancelled" ? "cancelled" : "failed",
        (e.kind === "cancelled" ? "Cancelled " : "Failed ") + f.name + (e.kind === "cancelled" ? "" : ": " + e.message));
    });
  }

  // Downloads.
  function offer(path) {
    var h = part.handle();
    if (!h || !path) return;
    h.stat(path).then(function (info) {
      var r = row("download", "The job offers " + info.path + " (" + size(info.size) + ")");
      r.setAttribute("data-name", info.name);
      setRow(r, "offered");
      ask(r, "", { save: "Save", dismiss: "Dismiss" }).then(function (c) {
        if (c === "dismiss") return setRow(r, "dismissed");
        setRow(r, "running", "Saving " + info.name + " (" + size(info.size) + ")");
        download(h, info, r);
      });
    }, function (e) { part.note("The job offered " + path + ", but: " + e.message); });
  }

  function download(h, info, r) {
    var sink = ("serviceWorker" in navigator && window.isSecureContext) ? streamSink(info) : blobSink(info);
    var t = h.download({ path: info.path, write: sink.write, progress: progress(r, info.size) });
    r.querySelector(".cancel").onclick = function () { t.cancel(); };
    t.done.then(function () {
      sink.end();
      setRow(r, "done", "Saved " + info.name + " (" + size(info.size) + ")" + sink.how);
    }, function (e) {
      sink.abort(e.message);
      setRow(r, e.kind === "cancelled" ? "cancelled" : "failed", (e.kind === "cancelled" ? "Cancelled " : "Failed ") + info.name +
        (e.kind === "cancelled" ? "" : ": " + e.message));
    });
  }

  // streamSink hands chunks to the service worker, which streams them to
  // the browser's downloads; write resolves when the worker wants more.
  var worker = null;
  function startWorker() {
    if (!worker) {
      worker = navigator.serviceWorker.register(app.getAttribute("data-worker"), { scope: app.getAttribute("data-worker-scope") })
        .then(function (reg) {
          var w = reg.active || reg.installing || reg.waiting;
          if (w.state === "activated") return w;
          return new Promise(function (resolve) {
            w.addEventListener("statechange", function () { if (w.state === "activated") resolve(w); });
          });
        });
    }
    return worker;
  }
  function streamSink(info) {
    var ch = new MessageChannel(), more = null, failed = null;
    var id = Array.from(crypto.getRandomValues(new Uint8Array(12)), function (b) { return (b + 256).toString(16).slice(1); }).join("");
    var ready = startWorker().then(function (w) {
      return new Promise(function (resolve) {
        ch.port1.onmessage = function (m) {
          if (m.data.ready) resolve();
          if (m.data.more && more) { var f = more; more = null; f(); }
          if (m.data.cancel) { failed = new Error("the download was cancelled in the browser"); if (more) more(); }
        };
        w.postMessage({ type: "download", id: id, name: info.name, size: info.size, port: ch.port2 }, [ch.port2]);
      });
    }).then(function () {
      var frame = document.createElement("iframe");
      frame.hidden = true;
      frame.src = app.getAttribute("data-worker-scope") + "dl/" + id + "/" + encodeURIComponent(info.name);
      document.body.appendChild(frame);
      setTimeout(function () { frame.remove(); }, 60000);
    });
    return {
      how: ", streamed to the browser's downloads",
      write: function (chunk) {
        return ready.then(function () {
          if (failed) throw failed;
          return new Promise(function (resolve, reject) {
            more = function () { return failed ? reject(failed) : resolve(); };
            ch.port1.postMessage({ chunk: chunk }, [chunk.buffer]);
          });
        });
      },
      end: function () { ch.port1.postMessage({ end: true }); },
      abort: function (why) { ch.port1.postMessage({ abort: why }); },
    };
  }
  // blobSink: without a service worker (a page not served over HTTPS) the
  // browser keeps the parts of a Blob, which it may page to disk.
  function blobSink(info) {
    var parts = [];
    return {
      how: " (held by the browser until saved: serve this page over HTTPS to stream)",
      write: function (chunk) { parts.push(chunk); return Promise.resolve(); },
      end: function () {
        var a = document.createElement("a");
        a.href = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
        a.download = info.name;
        a.click();
        parts = [];
        setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
      },
      abort: function () { parts = []; },
    };
  }
});
