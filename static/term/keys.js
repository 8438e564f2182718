// The browser terminal's clipboard and keys: OSC 52 from programs in the
// job (tmux, vim, `converge copy`) writes to the local clipboard, and
// never reads it; a paste of more than a few lines asks first; on small
// or touch screens a key bar gives the keys a phone lacks, with Ctrl and
// Alt as sticky modifiers for the next key.
"use strict";
(window.convergeTerminalParts = window.convergeTerminalParts || []).push(function (part) {
  var $ = part.$, app = part.app, term = part.term;
  var pasteLines = 5; // more lines than this: ask first

  // OSC 52: ESC ] 52 ; Pc ; BASE64 BEL writes; "?" (a read) is ignored.
  term.parser.registerOscHandler(52, function (data) {
    var i = data.indexOf(";");
    var b64 = i < 0 ? "" : data.slice(i + 1);
    if (b64 === "?" || !navigator.clipboard) return true;
    var text;
    try {
      text = new TextDecoder().decode(Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); }));
    } catch (e) { return true; }
    navigator.clipboard.writeText(text).then(function () {
      app.setAttribute("data-copied", String(text.length));
      part.note("The job copied " + text.length + " characters to your clipboard");
    }, function (e) { part.note("The job tried to copy to your clipboard, but the browser refused: " + e.message); });
    return true;
  });

  // A long paste asks first: it may run many commands.
  var ask = $("paste-ask"), pending = "";
  $("term").addEventListener("paste", function (ev) {
    var text = ev.clipboardData ? ev.clipboardData.getData("text/plain") : "";
    var lines = text.replace(/\r?\n$/, "").split(/\r?\n/).length;
    if (lines <= pasteLines) return;
    ev.preventDefault();
    ev.stopPropagation();
    pending = text;
    $("paste-what").textContent = "Paste " + lines + " lines into the shell? Each line may run as a command.";
    ask.hidden = false;
  }, true);
  $("paste-yes").addEventListener("click", function () {
    ask.hidden = true;
    term.paste(pending);
    pending = "";
    term.focus();
  });
  $("paste-no").addEventListener("click", function () { ask.hidden = true; pending = ""; term.focus(); });

  // The key bar.
  var held = { ctrl: false, alt: false };
  var keys = {
    esc: "\x1b", tab: "\t", up: "\x1b[A", down: "\x1b[B", right: "\x1b[C", left: "\x1b[D",
    pgup: "\x1b[5~", pgdn: "\x1b[6~", pipe: "|", tilde: "~", slash: "/",
  };
  function hold(mod, on) {
    held[mod] = on;
    $("keybar").querySelector('[data-key="' + mod + '"]').setAttribute("aria-pressed", on ? "true" : "false");
  }
  // Modified applies the held modifiers to one key's input, then lets
  // them go.
  function modified(data) {
    if (held.ctrl && data.length === 1) {
      var c = data.toUpperCase().charCodeAt(0);
      if (c >= 64 && c <= 95) data = String.fromCharCode(c - 64); // Ctrl-A … Ctrl-_
      else if (data === " ") data = "\x00";
      else if (data === "?") data = "\x7f";
    }
    if (held.alt) data = "\x1b" + data;
    hold("ctrl", false);
    hold("alt", false);
    return data;
  }
  part.input = function (data) { return held.ctrl || held.alt ? modified(data) : data; };
  $("keybar").addEventListener("pointerdown", function (ev) { ev.preventDefault(); }); // keep the keyboard up
  $("keybar").addEventListener("click", function (ev) {
    var b = ev.target.closest("button");
    if (!b) return;
    var k = b.getAttribute("data-key");
    if (k === "ctrl" || k === "alt") {
      hold(k, !held[k]);
    } else if (keys[k]) {
      part.send(modified(term.modes.applicationCursorKeysMode ? keys[k].replace(/^\x1b\[([ABCD])$/, "\x1bO$1") : keys[k]));
    }
    term.focus();
  });
});
