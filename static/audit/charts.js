// Bar charts of a report's figures on its admin page: plain elements, no library.
(function () {
  "use strict";
  const holder = document.getElementById("report-charts");
  const source = document.getElementById("report-figures");
  if (!holder || !source) return;
  const figures = JSON.parse(source.textContent);

  function chart(title, rows, unit) {
    // rows: [[label, value, note]]
    const shown = rows.filter(function (row) { return typeof row[1] === "number"; });
    if (!shown.length) return;
    const most = Math.max.apply(null, shown.map(function (row) { return row[1]; })) || 1;
    const box = document.createElement("figure");
    box.className = "chart";
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    box.appendChild(caption);
    shown.forEach(function (row) {
      const line = document.createElement("div");
      line.className = "bar-row";
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = row[0];
      const track = document.createElement("span");
      track.className = "bar-track";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.max(1, (100 * row[1]) / most) + "%";
      track.appendChild(bar);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = row[1] + (unit || "") + (row[2] ? " " + row[2] : "");
      line.append(label, track, value);
      box.appendChild(line);
    });
    holder.appendChild(box);
  }

  function percentiles(name) {
    const p = figures[name] || {};
    return [["p50", p.p50], ["p95", p.p95], ["p99", p.p99]];
  }

  chart("Activity", [["sessions", figures.sessions], ["turns", figures.turns], ["messages", figures.messages],
    ["tool calls", figures.tool_calls], ["errors", figures.errors]]);
  chart("Time to first token", percentiles("ttft_ms"), " ms");
  chart("Session duration", percentiles("duration_seconds"), " s");
  chart("Tokens by model", Object.entries(figures.tokens_by_model || {}).map(function (entry) {
    return [entry[0], entry[1].prompt_tokens + entry[1].completion_tokens];
  }));
  chart("Tool calls", Object.entries(figures.tools || {}).map(function (entry) {
    return [entry[0], entry[1].calls, "(" + Math.round(100 * entry[1].failure_rate) + "% failed)"];
  }));
  chart("Errors by code", Object.entries(figures.errors_by_code || {}));
  chart("Top topics", (figures.top_topics || []).map(function (row) { return [row.topic, row.sessions]; }));
  chart("Sentiment", Object.entries(figures.sentiment || {}));
  chart("Cost (USD)", [["replies", figures.cost_usd], ["summaries", figures.summary_cost_usd],
    ["in all", figures.total_cost_usd]]);
  chart("Cost of replies by model (USD)", Object.entries(figures.cost_by_model || {}));
  chart("Cost by day (USD)", Object.entries(figures.cost_by_day || {}));
  chart("Top spenders (USD)", Object.entries(figures.cost_by_visitor || {}));
  chart("Replies rated up, by model", Object.entries(figures.feedback_by_model || {}).map(function (entry) {
    return [entry[0], Math.round(100 * entry[1].satisfaction), "(" + entry[1].up + " up, " + entry[1].down + " down)"];
  }), "%");
})();
