// mirrorl report, part 2: the sections. Reads the JSON block and fills each <section> the page has
// (the Python side writes a section only when its data exists). Tables show one page of rows at a
// time, so 10,000 samples cost one page of DOM; filters, sorting and search work on the data.
"use strict";

const PARSE_START = performance.now();
const DATA = JSON.parse(document.getElementById("run-data").textContent);
const SECTION_MS = {parse: performance.now() - PARSE_START};
const FIRST_CURVES = ["accuracy", "reward", "loss", "response_tokens", "kl", "entropy"];
const TEXT_KEYS = new Set(["input", "output", "gts", "token_line"]);
const PAGE_SIZES = [25, 50, 100, 200];

// Per-token data, one JSON line per sample (see report.py): split into lines on first use, each
// line parsed when its sample is opened. The block comes after this script; until the browser
// has read it (a moment after the first render) there are no heat maps.
let tokenLines = null;
function tokensOf(row) {
  if (typeof row.token_line !== "number") return null;
  if (tokenLines === null) {
    const block = document.getElementById("run-tokens");
    if (!block) return null;
    tokenLines = block.textContent.split("\n");
  }
  const line = JSON.parse(tokenLines[row.token_line]);
  const logprobs = line.milli.map((m) => (m === null ? null : m / 1000));
  let texts = line.texts || null;
  if (line.lengths) {
    const output = String(row.output ?? "");
    let at = 0;
    texts = [...line.lengths.map((n) => output.slice(at, (at += n))), ...(line.tail || [])];
  }
  return {logprobs, texts};
}

const unique = (values) => [...new Set(values)].filter((v) => v !== null && v !== undefined);
const byValue = (a, b) => (typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b)));
const mean = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
const numbers = (rows, key) => rows.map((r) => r[key]).filter((v) => typeof v === "number");

function show(value) {
  if (value !== null && typeof value === "object") {
    if (Array.isArray(value)) return JSON.stringify(value);
    return Object.entries(value).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ");
  }
  return fmt(value);
}

function correctCell(value) {
  if (value === true) return el("span", {class: "ok"}, "\u2713 yes");
  if (value === false) return el("span", {class: "bad"}, "\u2717 no");
  return el("span", {class: "muted"}, "unscored");
}

function versionsText(versions) {
  if (!Array.isArray(versions)) return show(versions);
  return versions.map((run) => (Array.isArray(run) ? `v${run[0]}\u00D7${run[1]}` : String(run))).join(" ");
}

function kvTable(caption, object) {
  return el("table", {class: "kv"}, el("caption", {}, caption),
    el("tbody", {}, Object.entries(object).map(([key, value]) =>
      el("tr", {}, el("th", {scope: "row"}, key), el("td", {class: typeof value === "number" ? "num" : null}, show(value))))));
}

// ---- a paginated, sortable, filterable table of samples -------------------------------------
// spec: caption, rows, columns [{key, label, num, cell(row)}], filters [{name, label, options
// [[value, text]], initial, test(row, value)}], searchKeys, onView(matchingRows), onOpen(row).
function sampleTable(spec) {
  const state = {search: "", sortKey: null, sortDir: 1, page: 0, pageSize: 25, shown: [], selected: null, filters: {}};
  const haystacks = new WeakMap();
  const controls = el("div", {class: "controls"});
  for (const filter of spec.filters) {
    state.filters[filter.name] = filter.initial ?? "";
    controls.append(el("label", {}, filter.label, el("select", {
      onchange: (event) => { state.filters[filter.name] = event.target.value; update(); }},
    [["", "all"], ...filter.options].map(([value, text]) => el("option", {value, selected: String(value) === String(state.filters[filter.name])}, text)))));
  }
  let timer = null;
  controls.append(el("label", {}, "search prompt, response, answer", el("input", {type: "search", size: 28,
    oninput: (event) => { clearTimeout(timer); timer = setTimeout(() => { state.search = event.target.value.toLowerCase(); update(); }, 200); }})));
  const status = el("p", {class: "muted", "aria-live": "polite"});
  const headRow = el("tr", {}, el("th", {scope: "col"}, el("span", {class: "muted"}, "#")));
  for (const column of spec.columns) {
    const th = el("th", {scope: "col", class: column.num ? "num" : null},
      el("button", {type: "button", onclick: () => sortBy(column.key, th)}, column.label));
    headRow.append(th);
  }
  const tbody = el("tbody");
  const table = el("table", {class: "samples"}, el("caption", {}, spec.caption), el("thead", {}, headRow), tbody);
  const previous = el("button", {type: "button", onclick: () => turn(-1)}, "\u2190 previous");
  const next = el("button", {type: "button", onclick: () => turn(1)}, "next \u2192");
  const pageText = el("span");
  const pager = el("div", {class: "pager"}, previous, pageText, next, el("label", {}, " rows per page ",
    el("select", {onchange: (event) => { state.pageSize = Number(event.target.value); state.page = 0; renderPage(); }},
      PAGE_SIZES.map((n) => el("option", {value: n, selected: n === state.pageSize}, String(n))))));

  function matches(row) {
    for (const filter of spec.filters) {
      const value = state.filters[filter.name];
      if (value !== "" && !filter.test(row, value)) return false;
    }
    if (!state.search) return true;
    let hay = haystacks.get(row);
    if (hay === undefined) {
      hay = spec.searchKeys.map((key) => String(row[key] ?? "")).join("\n").toLowerCase();
      haystacks.set(row, hay);
    }
    return hay.includes(state.search);
  }

  function sortBy(key, th) {
    state.sortDir = state.sortKey === key ? -state.sortDir : 1;
    state.sortKey = key;
    for (const cell of headRow.children) cell.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
    update();
  }

  function update() {
    let shown = spec.rows.filter(matches);
    if (state.sortKey !== null) {
      const key = state.sortKey, dir = state.sortDir;
      const rank = (v) => (v === null || v === undefined ? null : typeof v === "boolean" ? Number(v) : v);
      // missing values last whichever the direction; ties keep the log's order (sort is stable)
      shown = shown.slice().sort((a, b) => {
        const x = rank(a[key]), y = rank(b[key]);
        if (x === null || y === null) return (x === null) - (y === null);
        return dir * byValue(x, y);
      });
    }
    state.shown = shown;
    state.page = 0;
    renderPage();
    if (spec.onView) spec.onView(shown);
  }

  function turn(delta) { state.page += delta; renderPage(); }

  function renderPage() {
    const pages = Math.max(1, Math.ceil(state.shown.length / state.pageSize));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    const start = state.page * state.pageSize, rows = state.shown.slice(start, start + state.pageSize);
    tbody.replaceChildren(...rows.map((row, i) => renderRow(row, start + i + 1)));
    status.textContent = `${state.shown.length} of ${spec.rows.length} samples match`;
    pageText.textContent = `page ${state.page + 1} of ${pages}`;
    previous.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
  }

  function renderRow(row, number) {
    const tr = el("tr", {class: row === state.selected ? "selected" : null},
      el("td", {}, el("button", {type: "button", "aria-label": `open sample ${number}`, onclick: () => open(row, tr)}, `open ${number}`)));
    for (const column of spec.columns) {
      const value = column.cell ? column.cell(row) : fmt(row[column.key]);
      tr.append(el("td", {class: column.num ? "num" : null}, column.text ? el("span", {class: "clip"}, value) : value));
    }
    return tr;
  }

  function open(row, tr) {
    state.selected = row;
    for (const other of tbody.children) other.classList.toggle("selected", other === tr);
    spec.onOpen(row);
  }

  update();
  return el("div", {}, controls, status, spec.above || null, el("div", {class: "table-wrap"}, table), pager);
}

// Columns for the keys that some row has, in this order.
function columnsFor(rows, wanted) {
  const present = new Set();
  for (const row of rows) for (const key in row) present.add(key);
  return wanted.filter((column) => present.has(column.key));
}

function preview(text) {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length > 140 ? flat.slice(0, 140) + "\u2026" : flat;
}

const SAMPLE_COLUMNS = [
  {key: "step", label: "iter", num: true}, {key: "name", label: "eval"}, {key: "problem", label: "problem", num: true},
  {key: "group", label: "group", num: true}, {key: "sample", label: "sample", num: true},
  {key: "greedy", label: "greedy", cell: (r) => (r.greedy ? "greedy" : "sampled")},
  {key: "difficulty", label: "difficulty", num: true},
  {key: "correct", label: "correct", cell: (r) => correctCell(r.correct)}, {key: "score", label: "score", num: true},
  {key: "reward", label: "reward", num: true}, {key: "length_reward", label: "length r.", num: true},
  {key: "repeat_penalty", label: "repeat p.", num: true}, {key: "advantage", label: "advantage", num: true},
  {key: "tokens", label: "tokens", num: true}, {key: "finish_reason", label: "finish"},
  {key: "off_policy_weight", label: "off-policy w.", num: true}, {key: "versions", label: "versions", cell: (r) => versionsText(r.versions)},
  {key: "output", label: "response", text: true, cell: (r) => preview(r.output)},
];

const CORRECT_FILTER = {name: "correct", label: "correct", options: [["yes", "correct"], ["no", "incorrect"], ["none", "unscored"]],
  test: (row, value) => (value === "yes" ? row.correct === true : value === "no" ? row.correct === false : row.correct == null)};

function valueFilter(rows, key, label, initial) {
  const values = unique(rows.map((r) => r[key])).sort(byValue);
  return {name: key, label, initial, options: values.map((v) => [String(v), fmt(v)]), test: (row, value) => String(row[key]) === value};
}

// ---- one sample, its group, the same problem elsewhere ----------------------------------------
function facts(row) {
  const shown = Object.entries(row).filter(([key]) => !TEXT_KEYS.has(key));
  return el("div", {class: "facts"}, shown.map(([key, value]) =>
    el("span", {}, el("span", {class: "muted"}, key + " "), key === "correct" ? correctCell(value) : key === "versions" ? versionsText(value) : show(value))));
}

function showSample(panel, row, context) {
  const heading = el("h3", {tabindex: -1}, context.title(row));
  const groupBox = el("div"), acrossBox = el("div");
  const group = context.group(row), across = context.across(row), tokens = tokensOf(row);
  setChildren(panel, heading, facts(row),
    el("h4", {}, "Prompt"), el("pre", {}, row.input ?? ""),
    el("h4", {}, "Response"), el("pre", {}, row.output ?? ""),
    tokens && tokens.logprobs.length ? [el("h4", {}, "Token probabilities"), tokenHeatmap(tokens.logprobs, tokens.texts)] : null,
    el("h4", {}, "Reference answer"), el("pre", {}, row.gts ?? ""),
    el("div", {class: "pager"},
      el("button", {type: "button", onclick: () => showGroup(groupBox, group, row, context.groupLabel)}, `${context.groupLabel} (${group.length} side by side)`),
      across.length > 1 ? el("button", {type: "button", onclick: () => showAcross(acrossBox, across, context.acrossLabel)},
        `same problem in every ${context.acrossLabel} (${across.length})`) : null),
    groupBox, acrossBox);
  panel.hidden = false;
  heading.focus();
}

function showGroup(box, rows, current, label) {
  const scores = numbers(rows, "score");
  setChildren(box, el("h4", {}, `${label}: ${rows.length} responses`),
    el("p", {class: "muted"}, `mean score ${fmt(mean(scores))}; correct ${rows.filter((r) => r.correct === true).length} of ${rows.length}`),
    el("div", {class: "cards"}, rows.map((row) => el("div", {class: row === current ? "card current" : "card"},
      el("h4", {}, row.greedy ? "greedy" : `sample ${row.sample ?? rows.indexOf(row)}`, row === current ? " (open above)" : ""),
      el("div", {class: "facts"}, ["correct", "score", "reward", "length_reward", "repeat_penalty", "advantage", "tokens", "finish_reason"]
        .filter((key) => key in row)
        .map((key) => el("span", {}, el("span", {class: "muted"}, key + " "), key === "correct" ? correctCell(row[key]) : fmt(row[key])))),
      el("pre", {}, row.output ?? "")))));
}

// One line per iteration (or evaluation) of the samples of one problem; their responses on demand.
function showAcross(box, groups, label) {
  const points = groups.map(([key, rows]) => [Number(key), mean(rows.map((r) => (r.correct === true ? 1 : 0)))]);
  const body = el("tbody", {}, groups.map(([key, rows]) => {
    const details = el("details", {}, el("summary", {}, `${rows.length} responses`));
    details.addEventListener("toggle", () => {
      if (details.open && details.children.length === 1) details.append(...rows.map((r) => el("pre", {}, r.output ?? "")));
    });
    const finishes = unique(rows.map((r) => r.finish_reason)).map((f) => `${f} ${rows.filter((r) => r.finish_reason === f).length}`);
    return el("tr", {}, el("td", {class: "num"}, String(key)), el("td", {class: "num"}, `${rows.filter((r) => r.correct === true).length} / ${rows.length}`),
      el("td", {class: "num"}, fmt(mean(numbers(rows, "score")))), el("td", {class: "num"}, fmt(mean(numbers(rows, "tokens")))),
      el("td", {}, finishes.join(", ")), el("td", {}, details));
  }));
  setChildren(box, el("h4", {}, `The same problem in every ${label}`),
    points.every(([x]) => Number.isFinite(x)) && points.length > 1 ? el("div", {class: "grid"}, lineChart(`fraction correct by ${label}`, points)) : null,
    el("table", {}, el("thead", {}, el("tr", {}, [label, "correct", "mean score", "mean tokens", "finish", "responses"].map((h) => el("th", {scope: "col"}, h)))), body));
}

function indexBy(rows, keyOf) {
  const index = new Map();
  for (const row of rows) {
    const key = keyOf(row);
    if (!index.has(key)) index.set(key, []);
    index.get(key).push(row);
  }
  return index;
}

// ---- the sections ----------------------------------------------------------------------------
function fillSummary(box) {
  box.append(kvTable("summary.json", DATA.summary));
}

function fillCurves(box) {
  const charts = [];
  const search = el("input", {type: "search", size: 24, oninput: () => {
    const text = search.value.toLowerCase();
    for (const chart of charts) chart.hidden = !chart.dataset.key.includes(text);
  }});
  box.append(el("div", {class: "controls"}, el("label", {}, "show curves whose name contains", search)));
  for (const [phase, rows] of Object.entries(DATA.metrics)) {
    const keys = new Set();
    for (const row of rows) for (const [key, value] of Object.entries(row)) if (key !== "step" && typeof value === "number") keys.add(key);
    const ordered = [...FIRST_CURVES.filter((k) => keys.has(k)), ...[...keys].filter((k) => !FIRST_CURVES.includes(k)).sort()];
    const grid = el("div", {class: "grid"});
    for (const key of ordered) {
      const chart = lineChart(key, rows.map((r, i) => [r.step ?? i, r[key]]).filter((p) => typeof p[1] === "number"));
      chart.dataset.key = key.toLowerCase();
      charts.push(chart);
      grid.append(chart);
    }
    box.append(el("h3", {}, `${phase}_metrics.jsonl: ${rows.length} steps, ${ordered.length} curves`), grid);
  }
}

function drawHistograms(box, rows, keys) {
  box.replaceChildren(...keys.filter(([key]) => rows.some((r) => key in r)).map(([key, label]) => histogram(label, numbers(rows, key))));
}

function fillRollouts(box) {
  const rows = DATA.rollouts;
  const steps = unique(rows.map((r) => r.step)).sort(byValue);
  const groups = indexBy(rows, (r) => `${r.step}|${r.group ?? "p" + r.problem}`);
  const problems = indexBy(rows, (r) => r.problem);
  const panel = el("div", {class: "panel", hidden: true});
  const hist = el("div", {class: "grid"});
  const context = {
    title: (r) => `Iteration ${r.step}, problem ${fmt(r.problem)}, group ${fmt(r.group)}`,
    group: (r) => groups.get(`${r.step}|${r.group ?? "p" + r.problem}`),
    groupLabel: "its group",
    across: (r) => [...indexBy(problems.get(r.problem) || [r], (x) => x.step)],
    acrossLabel: "iteration",
  };
  box.append(el("p", {class: "muted"}, `${rows.length} samples in ${steps.length} iterations (rollouts/<iteration>.jsonl). ` +
    "Sort by a column, filter, search; open a sample for its prompt, response, token log-probs, its group side by side " +
    "and the same problem across iterations. The histograms show the samples that match."));
  box.append(sampleTable({
    caption: "Rollout samples", rows, columns: columnsFor(rows, SAMPLE_COLUMNS.filter((c) => !["name", "sample", "greedy"].includes(c.key))),
    filters: [valueFilter(rows, "step", "iteration", String(steps[steps.length - 1])), CORRECT_FILTER,
      valueFilter(rows, "finish_reason", "finish reason")],
    searchKeys: ["input", "output", "gts"], above: hist,
    onView: (shown) => drawHistograms(hist, shown, [["score", "score (total reward)"], ["tokens", "response tokens"], ["advantage", "advantage"]]),
    onOpen: (row) => showSample(panel, row, context),
  }), panel);
}

function fillEvaluation(box) {
  const evals = DATA.evals;
  const results = evals.filter((e) => e.result);
  if (results.length) {
    const keys = unique(results.flatMap((e) => Object.keys(e.result))).filter((k) => k !== "pass1_by_difficulty");
    const levels = unique(results.flatMap((e) => Object.keys(e.result.pass1_by_difficulty || {}))).sort(byValue);
    const row = (label, valueOf) => el("tr", {}, el("th", {scope: "row"}, label), results.map((e) => el("td", {class: "num"}, show(valueOf(e.result)))));
    box.append(el("table", {}, el("caption", {}, "eval_<name>.json"),
      el("thead", {}, el("tr", {}, el("th", {scope: "col"}, ""), results.map((e) => el("th", {scope: "col", class: "num"}, e.name)))),
      el("tbody", {}, keys.map((k) => row(k, (r) => r[k])), levels.map((d) => row(`pass1, difficulty ${d}`, (r) => (r.pass1_by_difficulty || {})[d])))));
  }
  const byProblem = indexBy(evals.flatMap((e) => e.samples), (r) => r.problem);
  for (const evaluation of evals.filter((e) => e.samples.length)) {
    const rows = evaluation.samples;
    const groups = indexBy(rows, (r) => r.problem);
    const panel = el("div", {class: "panel", hidden: true}), hist = el("div", {class: "grid"});
    const context = {
      title: (r) => `Evaluation ${evaluation.name}, problem ${fmt(r.problem)}, ${r.greedy ? "greedy" : "sample " + fmt(r.sample)}`,
      group: (r) => groups.get(r.problem), groupLabel: "all responses to this problem",
      across: (r) => [...indexBy(byProblem.get(r.problem).filter((x) => !x.greedy), (x) => x.name)], acrossLabel: "evaluation",
    };
    // built when first opened: the first render need not lay out every evaluation's table
    const details = el("details", {}, el("summary", {}, el("h3", {style: "display:inline"},
      `eval_${evaluation.name}_samples.jsonl: ${rows.length} responses`)));
    box.append(details);
    details.addEventListener("toggle", () => details.open && details.children.length === 1 && details.append(sampleTable({
      caption: `Evaluation samples (${evaluation.name})`, rows,
      columns: columnsFor(rows, SAMPLE_COLUMNS.filter((c) => !["step", "name", "group"].includes(c.key))),
      filters: [CORRECT_FILTER, {name: "greedy", label: "decoding", options: [["greedy", "greedy"], ["sampled", "sampled"]],
        test: (r, v) => (v === "greedy") === Boolean(r.greedy)}, valueFilter(rows, "finish_reason", "finish reason"),
      valueFilter(rows, "difficulty", "difficulty")],
      searchKeys: ["input", "output", "gts"], above: hist,
      onView: (shown) => drawHistograms(hist, shown, [["tokens", "response tokens"]]),
      onOpen: (row) => showSample(panel, row, context),
    }), panel));
  }
}

function fillLong2short(box) {
  const rows = DATA.long2short;
  const keys = unique(rows.flatMap((r) => (r && typeof r === "object" ? Object.keys(r) : [])));
  box.append(el("table", {}, el("caption", {}, "long2short.json"),
    el("thead", {}, el("tr", {}, keys.map((k) => el("th", {scope: "col"}, k)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, keys.map((k) => el("td", {class: typeof r[k] === "number" ? "num" : null}, show(r[k]))))))));
}

function fillConfig(box) {
  box.append(el("pre", {}, DATA.config));
}

const FILLERS = {summary: fillSummary, curves: fillCurves, rollouts: fillRollouts, evaluation: fillEvaluation,
  long2short: fillLong2short, config: fillConfig};
for (const [id, fill] of Object.entries(FILLERS)) {
  const section = document.getElementById(id);
  if (!section) continue;
  const start = performance.now();
  try {
    fill(section.querySelector(".fill"));
    SECTION_MS[id] = performance.now() - start;
  } catch (error) {  // one broken section is reported in the page; the others still render
    window.mirrorlRecordError(`section ${id}: ${error && error.stack ? error.stack : error}`);
  }
}
// First render done, layout included: the time since navigation start, and the parts spent here
// (parsing the data, each section), for benchmarks/view.py.
const LAYOUT_START = performance.now();
void document.body.offsetHeight;
SECTION_MS.layout = performance.now() - LAYOUT_START;
document.documentElement.setAttribute("data-render-ms", performance.now().toFixed(1));
window.addEventListener("load", () => document.documentElement.setAttribute("data-load-ms", performance.now().toFixed(1)));
document.documentElement.setAttribute("data-section-ms", JSON.stringify(SECTION_MS, (k, v) => (typeof v === "number" ? +v.toFixed(1) : v)));
