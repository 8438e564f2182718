// The browser terminal's service worker: it turns a download the page
// streams to it (over a MessageChannel, chunk by chunk, from SFTP inside
// the page's SSH connection) into a response the browser saves to disk,
// so no whole file is ever held in memory. Its scope is
// /static/term/; it answers only /static/term/dl/ID/NAME for a download
// the page announced, and nothing else (everything else goes to the
// network as usual).
"use strict";
var pending = new Map(); // id → {stream, name, size}

self.addEventListener("install", function () { self.skipWaiting(); });
self.addEventListener("activate", function (ev) { ev.waitUntil(self.clients.claim()); });

self.addEventListener("message", function (ev) {
  var d = ev.data;
  if (!d || d.type !== "download" || !d.port) return;
  var port = d.port, controller = null, waiting = false;
  function more() { waiting = false; port.postMessage({ more: true }); }
  var stream = new ReadableStream({
    start: function (c) { controller = c; },
    pull: function () { if (waiting) more(); },
    cancel: function () { port.postMessage({ cancel: true }); },
  }, new CountQueuingStrategy({ highWaterMark: 4 })); // 4 chunks of 512 KiB
  port.onmessage = function (m) {
    if (m.data.chunk) {
      controller.enqueue(m.data.chunk);
      if (controller.desiredSize > 0) more(); else waiting = true;
    } else if (m.data.end) {
      controller.close();
    } else if (m.data.abort) {
      controller.error(new Error(m.data.abort));
    }
  };
  pending.set(d.id, { stream: stream, name: d.name, size: d.size });
  port.postMessage({ ready: true });
});

self.addEventListener("fetch", function (ev) {
  var m = /\/dl\/([0-9a-f]+)\/[^\/]*$/.exec(new URL(ev.request.url).pathname);
  if (!m || !pending.has(m[1])) return;
  var p = pending.get(m[1]);
  pending.delete(m[1]);
  ev.respondWith(new Response(p.stream, {
    headers: {
      "Content-Type": "application/octet-stream",
      "Content-Disposition": "attachment; filename*=UTF-8''" + encodeURIComponent(p.name),
      "Content-Length": String(p.size),
      "X-Content-Type-Options": "nosniff",
    },
  }));
});
