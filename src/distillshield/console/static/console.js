// The console's only script of its own: draws the charts whose data the server put in the page.
(function () {
  "use strict";

  function drawTraffic(el) {
    if (el.dataset.drawn) return;
    var src = document.getElementById("traffic-data");
    if (!src || typeof uPlot === "undefined") return;
    var d = JSON.parse(src.textContent);
    el.dataset.drawn = "1";
    var opts = {
      width: Math.max(320, el.clientWidth || 800),
      height: 220,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      series: [
        {},
        { label: "requests", stroke: "#2563eb", fill: "rgba(37,99,235,0.12)", width: 2 },
        { label: "refused (4xx/5xx)", stroke: "#dc2626", width: 2 },
      ],
      axes: [{}, { label: "per hour" }],
      scales: { y: { range: function (u, min, max) { return [0, Math.max(5, max)]; } } },
    };
    new uPlot(opts, [d.t, d.requests, d.refused], el);
  }

  function drawAll() {
    document.querySelectorAll('[data-chart="traffic"]').forEach(drawTraffic);
  }

  document.addEventListener("DOMContentLoaded", drawAll);
  document.addEventListener("htmx:afterSettle", drawAll);
})();
