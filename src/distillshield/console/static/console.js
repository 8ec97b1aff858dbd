// The console's only script of its own: draws the charts whose data the server put in the page.
(function () {
  "use strict";

  // Requests and refusals per bucket (an hour, or a day): the overview's two traffic charts.
  function drawTraffic(el) {
    var d = dataOf(el);
    if (!d) return;
    var opts = {
      width: Math.max(320, el.clientWidth || 800),
      height: 220,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      series: [
        {},
        { label: "requests", stroke: "#2563eb", fill: "rgba(37,99,235,0.12)", width: 2 },
        { label: "refused (4xx/5xx)", stroke: "#dc2626", width: 2 },
      ],
      axes: [{}, { label: el.dataset.unit }],
      scales: { y: { range: function (u, min, max) { return [0, Math.max(5, max)]; } } },
    };
    new uPlot(opts, [d.t, d.requests, d.refused], el);
  }

  function utc(ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); }

  function dataOf(el) {
    if (el.dataset.drawn || typeof uPlot === "undefined") return null;
    var src = document.getElementById(el.dataset.source);
    if (!src) return null;
    el.dataset.drawn = "1";
    return JSON.parse(src.textContent);
  }

  // An account's requests and refusals (left axis) and tokens (right axis) per hour.
  function drawAccountRequests(el) {
    var d = dataOf(el);
    if (!d) return;
    var tokens = d.prompt_tokens.map(function (p, i) { return p + d.completion_tokens[i]; });
    var opts = {
      width: Math.max(320, el.clientWidth || 600),
      height: 220,
      tzDate: utc,
      series: [
        {},
        { label: "requests", stroke: "#2563eb", fill: "rgba(37,99,235,0.12)", width: 2, scale: "n" },
        { label: "refused", stroke: "#dc2626", width: 2, scale: "n" },
        { label: "tokens", stroke: "#059669", width: 1, dash: [4, 3], scale: "tok" },
      ],
      axes: [{}, { scale: "n", label: "requests / h" }, { scale: "tok", side: 1, label: "tokens / h", grid: { show: false } }],
      scales: {
        n: { range: function (u, min, max) { return [0, Math.max(5, max)]; } },
        tok: { range: function (u, min, max) { return [0, Math.max(10, max)]; } },
      },
    };
    new uPlot(opts, [d.t, d.requests, d.refused, tokens], el);
  }

  // An account's risk, 0..1, at the hours the policy saw it and the risk board's current value.
  function drawAccountRisk(el) {
    var d = dataOf(el);
    if (!d) return;
    var opts = {
      width: Math.max(320, el.clientWidth || 600),
      height: 220,
      tzDate: utc,
      series: [{}, { label: "risk", stroke: "#d97706", width: 2, points: { show: true, size: 6 } }],
      axes: [{}, { label: "risk" }],
      scales: { x: { range: function (u, min, max) { return min === max ? [min - 3600, max + 3600] : [min, max]; } },
                y: { range: [0, 1] } },
    };
    new uPlot(opts, [d.t, d.risk], el);
  }

  // The share of an account's sampled requests per hour whose prompt asks for step-by-step reasoning, 0..1.
  function drawAccountCot(el) {
    var d = dataOf(el);
    if (!d) return;
    var opts = {
      width: Math.max(320, el.clientWidth || 600),
      height: 160,
      tzDate: utc,
      series: [
        {},
        { label: "CoT share (sampled, at most " + d.cot_per_hour + " requests/h)", stroke: "#7c3aed", width: 2,
          points: { show: true, size: 4 }, value: function (u, v) { return v == null ? "—" : Math.round(v * 100) + "%"; } },
        { label: "requests classified", show: false, value: function (u, v) { return v == null ? "—" : v; } },
      ],
      axes: [{}, { label: "CoT share", values: function (u, vals) { return vals.map(function (v) { return Math.round(v * 100) + "%"; }); } }],
      scales: { y: { range: [0, 1] } },
    };
    new uPlot(opts, [d.t, d.cot_share, d.cot_sampled], el);
  }

  function drawAll() {
    document.querySelectorAll('[data-chart="traffic"]').forEach(drawTraffic);
    document.querySelectorAll('[data-chart="account-requests"]').forEach(drawAccountRequests);
    document.querySelectorAll('[data-chart="account-risk"]').forEach(drawAccountRisk);
    document.querySelectorAll('[data-chart="account-cot"]').forEach(drawAccountCot);
  }

  document.addEventListener("DOMContentLoaded", drawAll);
  document.addEventListener("htmx:afterSettle", drawAll);
})();
