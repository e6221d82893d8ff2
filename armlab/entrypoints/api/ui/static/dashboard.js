/* armlab dashboard: draws the experiment page's charts with uPlot from charts.json and
 * redraws them when the data changes (polled every 2 s while the page is open). The tables
 * above the charts refresh themselves through htmx (hx-trigger="every 2s"). */
(function () {
  "use strict";
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"];
  var POLL_MS = 2000;
  var charts = [];
  var lastBody = null;

  function width(el) { return Math.max(320, el.clientWidth || 560); }

  function seriesOf(keys, pointsShown) {
    var out = [{}];
    keys.forEach(function (k, i) {
      out.push({ label: k, stroke: PALETTE[i % PALETTE.length], width: 1.5,
                 points: { show: pointsShown, size: 4 }, spanGaps: true });
    });
    return out;
  }

  function verticalLine(at, color) {
    return { hooks: { draw: [function (u) {
      if (at == null) { return; }
      var x = u.valToPos(at, "x", true);
      if (!isFinite(x)) { return; }
      var ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.setLineDash([6, 4]);
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke(); ctx.restore();
    }] } };
  }

  function plot(el, title, series, data, extra) {
    el.textContent = "";
    el.setAttribute("data-points", String(data[0].length));
    if (!data[0].length) {
      var p = document.createElement("p");
      p.className = "empty"; p.textContent = "no data yet";
      el.appendChild(p);
      return;
    }
    var opts = { title: title, width: width(el), height: 220, series: series,
                 scales: { x: { time: true, range: xRange } }, legend: { live: true },
                 plugins: extra ? [extra] : [] };
    charts.push(new uPlot(opts, data, el));
  }

  /* A single time point (one bucket, one snapshot) gets a minute either side, so it is drawn
   * instead of collapsing the axis. */
  function xRange(u, min, max) {
    return min === max ? [min - 60, max + 60] : [min, max];
  }

  function aligned(block, keys) {
    var data = [block.x];
    keys.forEach(function (k) { data.push(block.series[k] || []); });
    return data;
  }

  function setSub(name, text) {
    var el = document.querySelector('[data-sub="' + name + '"]');
    if (el) { el.textContent = text; }
  }

  function draw(d) {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    var keys = d.arms;
    var w = document.querySelector('[data-chart="weights"]');
    plot(w, "", seriesOf(keys, true), aligned(d.weights, keys));
    setSub("weights", "(" + d.snapshots + " allocator updates" +
           (d.weights.x.length < d.snapshots ? ", " + d.weights.x.length + " shown" : "") + ")");
    plot(document.querySelector('[data-chart="mean"]'), "",
         seriesOf(keys, d.mean.x.length < 60), aligned(d.mean, keys));
    setSub("mean", "(" + d.bucket_s + " s buckets)");
    var pb = document.querySelector('[data-chart="prob_best"]');
    plot(pb, "", seriesOf(keys, true), aligned(d.prob_best, keys));
    if (!d.prob_best.x.length) { setSub("prob_best", "(only Thompson sampling computes it)"); }

    var holder = document.getElementById("cs-charts");
    holder.textContent = "";
    Object.keys(d.cs).forEach(function (arm) {
      var c = d.cs[arm];
      var fig = document.createElement("figure");
      var cap = document.createElement("figcaption");
      cap.textContent = arm + " − " + d.control +
        (c.stop_at != null ? " (decided: dashed line)" : "");
      var box = document.createElement("div");
      box.className = "chart"; box.setAttribute("data-chart", "cs-" + arm);
      fig.appendChild(cap); fig.appendChild(box); holder.appendChild(fig);
      var series = [{},
        { label: "estimate", stroke: "#1f77b4", width: 1.5, points: { show: true, size: 3 } },
        { label: "lower", stroke: "#999", dash: [4, 3], width: 1 },
        { label: "upper", stroke: "#999", dash: [4, 3], width: 1 }];
      plot(box, "", series, [c.x, c.estimate, c.low, c.high],
           verticalLine(c.stop_at, "#d62728"));
    });
    document.getElementById("charts").setAttribute("data-rendered", String(Date.now()));
  }

  function refresh(url) {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (body) {
        if (body && body !== lastBody) { lastBody = body; draw(JSON.parse(body)); }
      })
      .catch(function () { /* the next poll tries again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("charts");
    if (!box || typeof uPlot === "undefined") { return; }
    var url = box.getAttribute("data-url");
    refresh(url);
    setInterval(function () { if (!document.hidden) { refresh(url); } }, POLL_MS);
  });
})();
