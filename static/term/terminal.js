// The browser terminal's page script. SSH itself runs in the Go
// WebAssembly client (package webterm): it checks the host key, logs in
// and carries the shell, end to end with the agent, so the server relays
// only ciphertext. This script renders with xterm.js, keeps the browser's
// key in IndexedDB (WebCrypto, non-extractable), and shows what happens.
// A key file the user picks stays in this page's memory.
"use strict";
(function () {
  var app = document.getElementById("terminal-app");
  if (!app) return;
  function $(id) { return document.getElementById(id); }
  var status = $("status"), connectBtn = $("connect"), login = $("login"), help = $("login-help");

  var api = null;       // the Go client, once it has started
  var browserKey = null; // {publicKey, sign}, or null when the browser cannot keep one
  var keyProblem = "";
  var keyFile = null;   // Uint8Array of a picked private key file
  var handle = null;    // the current connection
  var generation = 0;   // counts connections
  var pin = pinFromFragment();
  var shown = false;    // the first output after load has been timed
  var term, fit;        // xterm.js, once its script has run

  // This script runs first, before xterm.js is even parsed, to start what
  // takes longest at once: compiling the client and loading the key.
  performance.mark("converge:script");
  var compiled = WebAssembly.compileStreaming(fetch(app.getAttribute("data-wasm")));
  compiled.then(function () { performance.mark("converge:compiled"); });
  var keyReady = loadKey().then(function (k) { browserKey = k; performance.mark("converge:key-ready"); }, function (e) {
    keyProblem = e.message;
    $("browser-key").textContent = "(none: " + e.message + ")";
  });
  document.addEventListener("DOMContentLoaded", start); // after the other deferred scripts

  function setState(state, text) {
    app.setAttribute("data-state", state);
    status.textContent = text;
  }
  function offer(label) { connectBtn.textContent = label; connectBtn.hidden = false; }
  function needLogin(text) {
    help.textContent = text;
    help.hidden = false;
    login.open = true;
  }

  // #fp=SHA256:… from the link in the job log. The fragment never reaches
  // the server. '+' is kept as it is (URLSearchParams would make it a space).
  function pinFromFragment() {
    var parts = location.hash.replace(/^#/, "").split("&");
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].indexOf("fp=") === 0) {
        try { return decodeURIComponent(parts[i].slice(3)); } catch (e) { return parts[i].slice(3); }
      }
    }
    return "";
  }

  // #…&attach or #…&attach=NAME joins a shell the agent keeps (the most
  // recent one, or NAME) instead of starting a new one.
  function commandFromFragment() {
    var parts = location.hash.replace(/^#/, "").split("&");
    for (var i = 0; i < parts.length; i++) {
      if (parts[i] === "attach") return "attach";
      if (parts[i].indexOf("attach=") === 0) return "attach " + decodeURIComponent(parts[i].slice(7)).replace(/[^A-Za-z0-9_-]/g, "");
    }
    return "";
  }

  // The terminal.
  function openTerminal() {
    term = new Terminal({
      cursorBlink: true, scrollback: 5000, allowProposedApi: false,
      fontFamily: 'ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace',
    });
    fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open($("term"));
    fit.fit();
    new ResizeObserver(function () { fit.fit(); }).observe($("term"));
    term.onResize(function (size) { if (handle) handle.resize(size.cols, size.rows); });
    var part = {
      term: term, app: app, $: $,
      handle: function () { return handle; },
      send: function (data) { if (handle) handle.write(data); },
      note: function (text) { status.textContent = text; },
      input: null, // function (data) → data: what the key bar does to typed keys
    };
    term.onData(function (data) { part.send(part.input ? part.input(data) : data); });
    // The page's other scripts (files.js, keys.js) add what they do.
    (window.convergeTerminalParts || []).forEach(function (fn) { fn(part); });
    term.attachCustomKeyEventHandler(function (ev) {
      var copy = ev.type === "keydown" && ev.key.toLowerCase() === "c" &&
        ((ev.ctrlKey && ev.shiftKey) || (ev.metaKey && !ev.ctrlKey));
      if (copy && term.hasSelection() && navigator.clipboard) {
        navigator.clipboard.writeText(term.getSelection());
        ev.preventDefault();
        return false;
      }
      return true;
    });
  }

  // The browser's key: made once, non-extractable, kept in IndexedDB.
  function idb(mode, fn) {
    return new Promise(function (resolve, reject) {
      var open = indexedDB.open("converge", 1);
      open.onupgradeneeded = function () { open.result.createObjectStore("keys"); };
      open.onerror = function () { reject(open.error); };
      open.onsuccess = function () {
        var tx = open.result.transaction("keys", mode);
        var req = fn(tx.objectStore("keys"));
        tx.oncomplete = function () { open.result.close(); resolve(req.result); };
        tx.onerror = function () { open.result.close(); reject(tx.error); };
      };
    });
  }
  function loadKey() {
    if (!window.crypto || !crypto.subtle) {
      return Promise.reject(new Error("this page is not served over HTTPS, so the browser cannot keep a key for it"));
    }
    return idb("readonly", function (s) { return s.get("browser-key"); }).then(function (pair) {
      if (pair) return pair;
      return crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]).then(function (made) {
        return idb("readwrite", function (s) { return s.put(made, "browser-key"); }).then(function () { return made; });
      });
    }).then(function (pair) {
      return crypto.subtle.exportKey("raw", pair.publicKey).then(function (raw) {
        return {
          publicKey: new Uint8Array(raw),
          sign: function (data) { return crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, data); },
        };
      });
    });
  }

  $("key-file").addEventListener("change", function (ev) {
    var f = ev.target.files[0];
    keyFile = null;
    if (!f) return;
    f.arrayBuffer().then(function (b) { keyFile = new Uint8Array(b); });
  });

  function connect() {
    if (!api) return;
    if (handle) handle.close();
    connectBtn.hidden = true;
    $("verify").hidden = true;
    help.hidden = true;
    setState("connecting", "Connecting…");
    performance.mark("converge:connect");
    var gen = ++generation;
    // Callbacks of a connection replaced since are ignored.
    function current(fn) {
      return function () { if (gen === generation) fn.apply(null, arguments); };
    }
    detaching = false;
    handle = api.connect(loginOptions({
      cols: term.cols, rows: term.rows, command: commandFromFragment(),
      onState: current(onState), onData: current(onData), onEnd: current(onEnd),
    }));
  }
  // loginOptions are the options of a connection: where, whom, with
  // which key, and what is in more.
  function loginOptions(more) {
    var o = {
      url: app.getAttribute("data-client"), user: app.getAttribute("data-user"), pin: pin,
      browserKey: browserKey, keyFile: keyFile, passphrase: $("passphrase").value, password: $("password").value,
    };
    for (var k in more) o[k] = more[k];
    return o;
  }
  connectBtn.addEventListener("click", connect);
  $("trust").addEventListener("click", function () {
    pin = $("host-fp").textContent;
    history.replaceState(null, "", "#fp=" + pin);
    connect();
  });

  function onState(state, detail) {
    if (state === "open") {
      performance.mark("converge:open");
      setState("open", detail === "resumable" ? "Connected; a dropped network only pauses the session" : "Connected");
      login.open = false;
      term.focus();
    } else if (state === "paused") {
      setState("paused", "Connection lost; reconnecting… (the session is kept)");
    } else if (state === "resumed") {
      setState("open", "Connected again");
    }
  }

  function onData(bytes, done) {
    if (!shown) {
      shown = true;
      app.setAttribute("data-first-output-ms", Math.round(performance.now()));
    }
    term.write(bytes, done);
  }

  function onEnd(kind, message, detail) {
    handle = null;
    switch (kind) {
      case "unpinned":
        $("host-fp").textContent = detail;
        $("verify").hidden = false;
        setState("verify", "Check the agent's host key");
        break;
      case "mismatch":
        $("refused-why").textContent = message;
        $("refused").hidden = false;
        $("term").hidden = true;
        login.hidden = true;
        setState("refused", "Refused: wrong host key");
        break;
      case "auth":
        needLogin((keyProblem ? "This browser has no key: " + keyProblem + ". " : "") + capital(message) + ".");
        if (detail === "password") $("password").focus();
        setState("login", "Not logged in");
        offer("Connect");
        break;
      case "passphrase":
        $("passphrase-row").hidden = false;
        needLogin(capital(message) + ".");
        $("passphrase").focus();
        setState("login", "The key file needs its passphrase");
        offer("Connect");
        break;
      case "unreachable":
        setState("unreachable", capital(message));
        explainRefusal();
        offer("Try again");
        break;
      case "exit":
        if (detaching) {
          term.write("\r\n\x1b[7m Detached: the shell keeps running \x1b[0m\r\n");
          setState("ended", "Detached; the shell keeps running");
          setAttach(null);
          offer("New session");
          listShells();
          break;
        }
        term.write("\r\n\x1b[7m Session ended: exit status " + (detail || "unknown") + " \x1b[0m\r\n");
        setState("ended", "Session ended (exit status " + (detail || "unknown") + ")");
        offer("New session");
        break;
      case "closed":
        break;
      default: // lost, failed
        term.write("\r\n\x1b[7m " + capital(message) + " \x1b[0m\r\n");
        setState("ended", capital(message));
        offer("Connect again");
    }
  }

  // A browser does not show why a WebSocket was refused; ask the server.
  function explainRefusal() {
    var url = app.getAttribute("data-client").replace(/^ws/, "http");
    fetch(url, { cache: "no-store" }).then(function (resp) {
      if (resp.ok || resp.status === 426) return;
      return resp.text().then(function (t) { setState("unreachable", "The server says: " + t.trim()); });
    }).catch(function () {});
  }

  // Kept shells. The Shells button lists them: the agent's own `ls`, run
  // on a connection of its own, so that it works with or without a
  // session open. Attach reconnects with `attach NAME` (the shell left,
  // if any, keeps running); Detach types the detach keys, Enter ~ d.
  var detaching = false; // the detach keys were sent: the end is no exit
  function listShells() {
    if (!api) return;
    var out = "", dec = new TextDecoder();
    $("shells").hidden = false;
    $("shells-what").textContent = "Asking the agent…";
    api.connect(loginOptions({
      cols: 200, rows: 50, command: "ls",
      onData: function (bytes, done) { out += dec.decode(bytes, { stream: true }); done(); },
      onEnd: function (kind, message) {
        if (kind !== "exit") {
          $("shells-what").textContent = "Cannot list the shells: " + message;
          return;
        }
        showShells(out);
      },
    }));
  }
  // showShells shows the table `ls` wrote: NAME SIZE IDLE ATTACHED, then
  // how to attach; or its one line when no shell runs.
  function showShells(text) {
    var lines = text.split(/\r?\n/), rows = [], head = -1;
    for (var i = 0; i < lines.length; i++) {
      if (/^NAME\s+SIZE\s+IDLE\s+ATTACHED/.test(lines[i])) { head = i; continue; }
      var m = head >= 0 && /^([A-Za-z0-9_-]+)\s+(\d+x\d+)\s+(\S+)\s+(.*)$/.exec(lines[i]);
      if (m) rows.push(m.slice(1));
    }
    var body = $("shells-list").tBodies[0];
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = body.insertRow();
      tr.setAttribute("data-shell", r[0]);
      r.forEach(function (v) { tr.insertCell().textContent = v; });
      var b = document.createElement("button");
      b.type = "button";
      b.textContent = "Attach";
      b.addEventListener("click", function () { attachShell(r[0]); });
      tr.insertCell().appendChild(b);
    });
    $("shells-list").hidden = rows.length === 0;
    $("shells-what").textContent = rows.length ? "Shells the agent keeps running (detach leaves one running: Enter ~ d):" : text.trim();
  }
  function attachShell(name) {
    $("shells").hidden = true;
    setAttach(name);
    term.reset(); // the shell's screen is replayed
    connect();
  }
  // setAttach puts attach=NAME into the fragment (or takes it out), so
  // that connecting again, or reloading, comes back to the same shell.
  function setAttach(name) {
    var parts = location.hash.replace(/^#/, "").split("&").filter(function (p) {
      return p !== "" && p !== "attach" && p.indexOf("attach=") !== 0;
    });
    if (name) parts.push("attach=" + encodeURIComponent(name));
    history.replaceState(null, "", "#" + parts.join("&"));
  }
  $("shells-btn").addEventListener("click", listShells);
  $("shells-close").addEventListener("click", function () { $("shells").hidden = true; });
  $("detach").addEventListener("click", function () {
    if (!handle) return;
    detaching = true;
    handle.write("\r~d");
  });

  function capital(s) { return s.charAt(0).toUpperCase() + s.slice(1); }

  // A changed network or a tab woken from sleep: check the link now
  // rather than at the next heartbeat.
  window.addEventListener("online", function () { if (handle) handle.check(); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && handle) handle.check();
  });

  // Start the client once xterm.js and wasm_exec.js have run; it calls
  // convergeWebtermReady, and the page connects at once.
  function start() {
    performance.mark("converge:start");
    openTerminal();
    performance.mark("converge:terminal");
    window.convergeWebtermReady = function (a) {
      performance.mark("converge:client-ready");
      api = a;
      keyReady.then(function () {
        if (browserKey) {
          $("browser-key").textContent = api.keyLine(browserKey.publicKey, "converge-browser@" + location.host);
        }
        connect();
      });
    };
    var go = new Go();
    compiled.then(function (module) {
      return WebAssembly.instantiate(module, go.importObject);
    }).then(function (instance) {
      window.convergeWasmMemory = instance.exports.mem; // its size shows what the client holds
      go.run(instance);
    }).catch(function (e) {
      setState("error", "The terminal could not start: " + e.message);
    });
  }
})();
