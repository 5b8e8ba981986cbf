// mirrorl report, part 1: DOM helpers and drawings (line charts, histograms, the token heat map).
// Every string from the run goes into the page as a text node or an attribute value, never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

// el("td", {class: "num"}, "0.5", otherNode): strings become text nodes; null children are skipped.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  return setChildren(node, ...children);
}

// Replace the children of `node` as el() adds them: nested lists flattened, null and false skipped.
function setChildren(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const child of children) if (child) node.append(child);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

// A number for reading: integers as they are, others with 4 significant digits; "–" for none.
function fmt(value) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 1000) return value.toFixed(0);
  if (abs >= 0.001) return String(Number(value.toPrecision(4)));
  if (abs < 1e-12) return "0";  // rounding noise, e.g. a group's mean advantage
  return value.toExponential(2);
}

// A line chart of [step, value] points: the raw values light, a trailing moving average dark.
function lineChart(name, points) {
  const width = 300, height = 130, left = 50, right = 8, top = 6, bottom = 18;
  points = points.slice().sort((a, b) => a[0] - b[0]);
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [xs[0], xs[xs.length - 1]];
  let [y0, y1] = extent(ys);
  if (y0 === y1) { const pad = Math.abs(y0) / 10 || 0.5; y0 -= pad; y1 += pad; }
  const sx = (x) => left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);
  const path = (pts) => pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
  const window = Math.max(5, Math.round(points.length / 50));
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${name}: ${points.length} points, steps ${x0} to ${x1}, from ${fmt(ys[0])} to ${fmt(ys[ys.length - 1])}, ` +
      `min ${fmt(extent(ys)[0])}, max ${fmt(extent(ys)[1])}`});
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    svg.append(svgEl("line", {x1: left, x2: width - right, y1: sy(y), y2: sy(y), stroke: "#e6e9ed"}));
    const label = fmt(Number(y.toPrecision(3)));
    svg.append(svgEl("text", {x: left - 3, y: sy(y) + 3, "text-anchor": "end", class: "axis"}, document.createTextNode(label)));
  }
  svg.append(svgEl("text", {x: left, y: height - 4, class: "axis"}, document.createTextNode(String(x0))));
  svg.append(svgEl("text", {x: width - right, y: height - 4, "text-anchor": "end", class: "axis"}, document.createTextNode(String(x1))));
  svg.append(svgEl("polyline", {points: path(thin(points, 1500)), class: "raw"}));
  if (points.length > 2 * window) svg.append(svgEl("polyline", {points: path(thin(movingAverage(points, window), 1500)), class: "smooth"}));
  return el("figure", {class: "chart"}, el("h4", {}, name), svg,
    el("figcaption", {class: "muted"}, `last ${fmt(ys[ys.length - 1])} at step ${x1}` + (points.length > 2 * window ? `; dark: mean of ${window}` : "")));
}

// [lowest, highest] of a list of numbers (a loop: spreading a long list into Math.min overflows the stack).
function extent(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}

function movingAverage(points, window) {
  let sum = 0;
  return points.map((p, i) => {
    sum += p[1];
    if (i >= window) sum -= points[i - window][1];
    return [p[0], sum / Math.min(i + 1, window)];
  });
}

// At most about `most` points: per bucket of consecutive points keep the lowest and the highest,
// so spikes stay visible in a long SFT curve.
function thin(points, most) {
  if (points.length <= most) return points;
  const size = Math.ceil(points.length / (most / 2)), out = [];
  for (let i = 0; i < points.length; i += size) {
    const bucket = points.slice(i, i + size);
    let lo = bucket[0], hi = bucket[0];
    for (const p of bucket) { if (p[1] < lo[1]) lo = p; if (p[1] > hi[1]) hi = p; }
    out.push(...(lo[0] <= hi[0] ? [lo, hi] : [hi, lo]));
  }
  return out;
}

// A histogram of the finite numbers in `values` in `bins` equal bins (integers get integer edges).
function histogram(name, values, bins = 20) {
  values = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  const figure = el("figure", {class: "chart"}, el("h4", {}, name));
  if (!values.length) {
    figure.append(el("p", {class: "muted"}, "no values"));
    return figure;
  }
  const width = 300, height = 120, left = 34, right = 8, top = 6, bottom = 18;
  const [lo, hi] = extent(values);
  const sum = values.reduce((a, b) => a + b, 0);
  const integers = values.every(Number.isInteger);
  if (integers) bins = Math.max(1, Math.min(bins, hi - lo + 1));
  const span = hi > lo ? hi - lo : 1, size = integers ? Math.ceil((hi - lo + 1) / bins) : span / bins;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / size))] += 1;
  const most = extent(counts)[1], barWidth = (width - left - right) / bins;
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${name}: ${values.length} values from ${fmt(lo)} to ${fmt(hi)}, mean ${fmt(sum / values.length)}`});
  counts.forEach((count, i) => {
    const h = (count / most) * (height - top - bottom);
    const edge = lo + i * size, upper = integers ? edge + size - 1 : edge + size;
    const label = integers && size === 1 ? `${edge}` : `${fmt(edge)} to ${fmt(upper)}`;
    svg.append(svgEl("rect", {x: left + i * barWidth + 0.5, y: height - bottom - h, width: Math.max(barWidth - 1, 0.5), height: h, class: "bar"},
      svgEl("title", {}, document.createTextNode(`${label}: ${count}`))));
  });
  svg.append(svgEl("text", {x: left - 3, y: top + 8, "text-anchor": "end", class: "axis"}, document.createTextNode(String(most))));
  svg.append(svgEl("text", {x: left, y: height - 4, class: "axis"}, document.createTextNode(fmt(lo))));
  svg.append(svgEl("text", {x: width - right, y: height - 4, "text-anchor": "end", class: "axis"}, document.createTextNode(fmt(hi))));
  figure.append(svg, el("figcaption", {class: "muted"}, `${values.length} values, mean ${fmt(sum / values.length)}`));
  return figure;
}

// Background of a token of probability p: white at p = 1, red as p falls to 0.
function probabilityColor(p) {
  return `hsl(8, 85%, ${(100 - 42 * (1 - p)).toFixed(1)}%)`;
}

// The response's tokens, each coloured by its probability under the sampling policy; the exact
// log-prob is in the token's tooltip. Without token texts, one cell per token.
function tokenHeatmap(logprobs, tokenTexts) {
  const box = el("div", {class: "tokens", role: "group", "aria-label": "response tokens coloured by probability"});
  const count = tokenTexts ? Math.min(logprobs.length, tokenTexts.length) : logprobs.length;
  let lowest = -1;
  for (let i = 0; i < count; i++) {
    const lp = logprobs[i], p = typeof lp === "number" ? Math.exp(lp) : null;
    if (typeof lp === "number" && (lowest < 0 || lp < logprobs[lowest])) lowest = i;
    box.append(el("span", {style: p === null ? null : `background:${probabilityColor(p)}`,
      title: `token ${i}: log-prob ${fmt(lp)}, p ${fmt(p)}`}, tokenTexts ? tokenTexts[i] : "\u25A0"));
  }
  const legend = el("div", {class: "legend", "aria-hidden": "true"}, "p =",
    [1, 0.75, 0.5, 0.25, 0].map((p) => el("span", {class: "swatch", style: `background:${probabilityColor(p)}`}, String(p))));
  const note = el("p", {class: "muted"}, `${count} tokens` + (lowest >= 0 ? `; lowest log-prob ${fmt(logprobs[lowest])} at token ${lowest}` : "") +
    (tokenTexts && tokenTexts.length !== logprobs.length ? ` (${logprobs.length} log-probs, ${tokenTexts.length} token texts)` : ""));
  return el("div", {}, legend, box, note);
}
