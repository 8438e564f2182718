// Live sessions view: the server pushes the rendered table body as a
// server-sent event whenever an agent connects, leaves or changes; this
// script only swaps it in. Without JavaScript the page still shows the
// table as of its loading.
"use strict";
(function () {
  var body = document.getElementById("agents");
  var live = document.getElementById("live");
  var count = document.getElementById("agent-count");
  if (!body || !live || !window.EventSource) return;
  var es = new EventSource(live.getAttribute("data-src"));
  function state(s, text) { live.setAttribute("data-state", s); live.textContent = text; }
  es.onopen = function () { state("open", "live"); };
  es.onerror = function () { state("error", "reconnecting…"); };
  es.addEventListener("agents", function (e) {
    body.innerHTML = e.data;
    if (count) count.textContent = body.querySelectorAll("tr[data-id]").length;
  });
})();
