// The kNN-LM explorer page: scores the text with POST /v1/score, colours each token by how
// many bits the kNN-LM gained over the LM, draws perplexity against λ, and on a click asks
// POST /v1/next for the three distributions and the retrieved contexts at that position.
// Every number shown comes from the server; raw values sit in data-* attributes.

const $ = (id) => document.getElementById(id);
const LN2 = Math.LN2;
/** Gains beyond ±GAIN_SCALE bits get the end colours of the scale. */
const GAIN_SCALE = 4;
const TOP = 10;
const NEIGHBOURS = 16;
const CONTEXT = 40;
const CURVE_LAMBDAS = Array.from({ length: 21 }, (_, i) => i / 20);
const SAMPLE = "The jury further said in term-end presentments that the City Executive " +
  "Committee, which had over-all charge of the election, deserves the praise and thanks " +
  "of the City of Atlanta for the manner in which the election was conducted.";

const state = {
  info: null,
  score: null,
  selected: null, // position i (the prediction of token i + 1) whose details are shown
  pinned: false, // clicked: hovering no longer changes the details
  hoverTimer: 0,
  scoreCtl: null,
  nextCtl: null,
  timer: 0,
};

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "data") Object.assign(e.dataset, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

async function call(path, body, signal) {
  const init = body === undefined ? { signal } : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  };
  const res = await fetch(path, init);
  const data = await res.json();
  if (!res.ok) throw new Error(data.error?.message ?? `${res.status} ${res.statusText}`);
  return data;
}

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function settings() {
  return {
    lambda: Number($("lambda").value),
    k: Number($("k").value),
    temperature: Number($("temperature").value),
  };
}

function fmtP(p) {
  if (p === 0) return "0";
  return p >= 0.001 ? p.toFixed(3) : p.toExponential(1);
}

/** A perplexity: 3 decimals, or 4 significant digits in exponent form when huge. */
function fmtPpl(v) {
  if (v === null || !Number.isFinite(v)) return "∞";
  return v >= 1e5 ? v.toExponential(3) : v.toFixed(3);
}

/** A token label as shown: a space as ␣ (labels are printable already, `\n` escaped). */
function showLabel(label) {
  return label === " " ? "␣" : label;
}

function fmtBits(b) {
  if (b === -Infinity) return "−∞ bits";
  return `${b >= 0 ? "+" : "−"}${Math.abs(b).toFixed(2)} bits`;
}

/** log p (natural, null = −∞) → p. */
function prob(logp) {
  return logp === null ? 0 : Math.exp(logp);
}

/** Gain of the mix over the LM at position i, in bits. */
function gainBits(score, i) {
  const mix = score.mix[i];
  return mix === null ? -Infinity : (mix - score.lm[i]) / LN2;
}

/** Diverging colour: red (kNN hurts) through near-white to blue (kNN helps). */
function gainColour(bits) {
  const t = Math.max(-1, Math.min(1, bits / GAIN_SCALE));
  const mid = [247, 247, 247];
  const end = t < 0 ? [178, 24, 43] : [33, 102, 172];
  const a = Math.pow(Math.abs(t), 0.8);
  const c = mid.map((m, j) => Math.round(m + (end[j] - m) * a));
  return { bg: `rgb(${c.join(",")})`, fg: a > 0.55 ? "#fff" : "#1d2330" };
}

// ---------------------------------------------------------------------------------------------
// Scoring

function scheduleScore(delay = 180) {
  clearTimeout(state.timer);
  state.timer = setTimeout(runScore, delay);
}

async function runScore() {
  const text = $("text").value;
  state.scoreCtl?.abort();
  const ctl = new AbortController();
  state.scoreCtl = ctl;
  const tokens = $("tokens");
  if (new TextEncoder().encode(text).length < 2) {
    tokens.replaceChildren();
    tokens.dataset.state = "empty";
    setStatus("type at least two characters");
    return;
  }
  const { lambda, k, temperature } = settings();
  tokens.dataset.state = "loading";
  setStatus("scoring…");
  try {
    const score = await call(
      "/v1/score",
      { text, k, lambda, temperature, lambdas: CURVE_LAMBDAS },
      ctl.signal,
    );
    if (ctl.signal.aborted) return;
    state.score = score;
    renderTokens(score);
    renderSummary(score);
    renderCurve(score);
    tokens.dataset.state = "ready";
    setStatus(`${score.ids.length} tokens scored`);
    if (state.selected !== null && state.selected < score.lm.length) loadDetails(state.selected);
    else if (state.selected !== null) clearDetails();
  } catch (e) {
    if (ctl.signal.aborted) return;
    tokens.dataset.state = "error";
    setStatus(e.message, true);
  }
}

function renderTokens(score) {
  const box = $("tokens");
  const spans = score.pieces.map((piece, t) => {
    if (t === 0) {
      return el("span", { class: "tok first", title: "first token: nothing predicts it" }, piece);
    }
    const i = t - 1;
    const bits = gainBits(score, i);
    const { bg, fg } = gainColour(bits);
    const span = el("span", {
      class: "tok",
      title: `${JSON.stringify(score.labels[t])}: p_LM ${fmtP(prob(score.lm[i]))} → ` +
        `${fmtP(prob(score.mix[i]))} (${fmtBits(bits)})`,
      data: { pos: String(i), gain: String(bits) },
    }, piece);
    span.style.background = bg;
    span.style.color = fg;
    if (i === state.selected) span.classList.add("selected");
    if (i === state.selected && state.pinned) span.classList.add("pinned");
    return span;
  });
  box.replaceChildren(...spans);
}

function renderSummary(score) {
  const p = score.perplexity;
  const pct = p.mix === null ? null : (p.mix / p.lm - 1) * 100;
  const change = pct === null ? "" : ` (${pct < 0 ? "−" : "+"}${Math.abs(pct).toFixed(1)}%)`;
  $("summary").replaceChildren(
    `${score.lm.length} predictions · LM perplexity `,
    el("b", {}, fmtPpl(p.lm)),
    ` · kNN-LM at λ = ${score.lambda}: `,
    el("b", {}, fmtPpl(p.mix)),
    change,
    ` · best λ ${p.best.lambda} → `,
    el("b", {}, fmtPpl(p.best.perplexity)),
    ` · no neighbour votes for the true token at ${(p.missRate * 100).toFixed(0)}% of positions`,
  );
}

function renderCurve(score) {
  const W = 560, H = 210, L = 62, R = 14, T = 14, B = 34;
  const p = score.perplexity;
  const pts = p.lambdas.map((l, i) => [l, p.sweep[i]]).filter(([, y]) => Number.isFinite(y));
  const ys = [...pts.map(([, y]) => y), p.lm];
  let lo = Math.min(...ys), hi = Math.max(...ys);
  // Perplexity explodes near λ = 1 when neighbours miss: keep the interesting range visible.
  hi = Math.min(hi, lo + Math.max(3 * (p.lm - lo), 0.5));
  const pad = (hi - lo) * 0.08 || 0.5;
  lo -= pad;
  hi += pad;
  const x = (l) => L + l * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const g = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": "perplexity against lambda",
  });
  for (let j = 0; j <= 4; j++) {
    const v = lo + (j / 4) * (hi - lo);
    g.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const tick = hi >= 1e5 ? v.toExponential(2) : v.toFixed(hi - lo < 0.5 ? 3 : 2);
    g.append(svg("text", { class: "tick", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, tick));
  }
  for (const l of [0, 0.25, 0.5, 0.75, 1]) {
    g.append(
      svg("text", { class: "tick", x: x(l), y: H - B + 16, "text-anchor": "middle" }, String(l)),
    );
  }
  g.append(
    svg(
      "text",
      { class: "tick", x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" },
      "λ (weight of p_kNN)",
    ),
  );
  g.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  g.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  g.append(svg("line", { class: "base", x1: L, x2: W - R, y1: y(p.lm), y2: y(p.lm) }));
  g.append(
    svg(
      "text",
      { class: "tick", x: W - R - 4, y: y(p.lm) - 5, "text-anchor": "end" },
      `LM alone ${fmtPpl(p.lm)}`,
    ),
  );
  const d = pts.map(([l, v], i) => `${i ? "L" : "M"}${x(l).toFixed(1)},${y(v).toFixed(1)}`).join(
    "",
  );
  // The curve leaves the plot at the top rather than flattening where it is cut off.
  const clip = svg("clipPath", { id: "plot-area" });
  clip.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B }));
  g.append(clip, svg("path", { class: "line", d, "clip-path": "url(#plot-area)" }));
  g.append(
    svg("line", { class: "now", x1: x(score.lambda), x2: x(score.lambda), y1: T, y2: H - B }),
  );
  if (p.mix !== null) {
    g.append(svg("circle", { class: "dot", cx: x(score.lambda), cy: y(p.mix), r: 4 }));
  }
  g.append(svg("circle", { class: "best", cx: x(p.best.lambda), cy: y(p.best.perplexity), r: 5 }));
  const below = y(p.best.perplexity) < H - B - 24;
  g.append(svg("text", {
    class: "tick",
    x: x(p.best.lambda),
    y: y(p.best.perplexity) + (below ? 20 : -10),
    "text-anchor": p.best.lambda > 0.8 ? "end" : p.best.lambda < 0.2 ? "start" : "middle",
  }, `best λ ${p.best.lambda}: ${fmtPpl(p.best.perplexity)}`));
  $("curve").replaceChildren(g);
}

// ---------------------------------------------------------------------------------------------
// Details of one position

function select(i) {
  state.selected = i;
  for (const s of document.querySelectorAll(".tok.selected")) s.classList.remove("selected");
  const span = document.querySelector(`.tok[data-pos="${i}"]`);
  span?.classList.add("selected");
  span?.classList.toggle("pinned", state.pinned);
  loadDetails(i);
}

function clearDetails() {
  state.selected = null;
  state.pinned = false;
  const box = $("details");
  box.dataset.state = "empty";
  box.replaceChildren(
    el("h2", { class: "panel-title" }, "Token details"),
    el("p", { class: "muted" }, "Point at a token, or click it to keep its details."),
  );
}

async function loadDetails(i) {
  const score = state.score;
  state.nextCtl?.abort();
  const ctl = new AbortController();
  state.nextCtl = ctl;
  const box = $("details");
  box.dataset.state = "loading";
  const { lambda, k, temperature } = settings();
  const request = {
    ids: score.ids.slice(0, i + 1),
    k,
    lambda,
    temperature,
    top: TOP,
    neighbours: NEIGHBOURS,
    context: CONTEXT,
    target: score.ids[i + 1],
  };
  try {
    const next = await call("/v1/next", request, ctl.signal);
    if (ctl.signal.aborted) return;
    renderDetails(score, i, next);
    box.dataset.pos = String(i);
    box.dataset.lambda = String(next.lambda);
    box.dataset.state = "ready";
  } catch (e) {
    if (ctl.signal.aborted) return;
    box.dataset.state = "error";
    box.replaceChildren(
      el("h2", { class: "panel-title" }, "Token details"),
      el("p", { class: "error" }, e.message),
    );
  }
}

function distList(name, title, items, target) {
  const max = Math.max(...items.map((t) => t.p), 1e-12);
  const rows = items.map((t) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${(100 * t.p) / max}%`;
    return el(
      "li",
      {
        class: t.id === target ? "target" : "",
        data: { id: String(t.id), label: t.label, p: String(t.p) },
      },
      el("code", {}, showLabel(t.label)),
      el("span", {}, bar),
      el("span", { class: "p" }, fmtP(t.p)),
    );
  });
  return el(
    "div",
    { class: `dist ${name}`, data: { dist: name } },
    el("h4", {}, title),
    rows.length ? el("ol", {}, ...rows) : el("p", { class: "muted note" }, "no mass"),
  );
}

function clip(text, n, fromEnd) {
  const s = text.replaceAll("\n", "↵");
  if (s.length <= n) return s;
  return fromEnd ? "…" + s.slice(s.length - n + 1) : s.slice(0, n - 1) + "…";
}

function renderDetails(score, i, next) {
  const t = next.target;
  const bits = t.mix > 0 ? Math.log2(t.mix / t.lm) : -Infinity;
  const context = score.pieces.slice(0, i + 1).join("");
  const hits = next.neighbours.filter((n) => n.id === t.id).length;
  const head = el(
    "div",
    { class: "headline" },
    "After ",
    el("code", {}, clip(context, 26, true)),
    " the true next token is ",
    el("code", {}, showLabel(t.label)),
  );
  const figures = el(
    "div",
    {
      id: "target",
      class: "figures",
      data: { lm: String(t.lm), knn: String(t.knn), mix: String(t.mix) },
    },
    el("span", {}, "p_LM ", el("b", {}, fmtP(t.lm))),
    el("span", {}, "p_kNN ", el("b", {}, fmtP(t.knn))),
    el("span", {}, `mix (λ = ${next.lambda}) `, el("b", {}, fmtP(t.mix))),
    el("span", {}, "gain ", el("b", {}, fmtBits(bits))),
  );
  const dists = el(
    "div",
    { class: "dists" },
    distList("lm", "p_LM", next.top.lm, t.id),
    distList("knn", `p_kNN (k = ${next.k}, T = ${next.temperature})`, next.top.knn, t.id),
    distList("mix", `mix (λ = ${next.lambda})`, next.top.mix, t.id),
  );
  const rows = next.neighbours.map((n) =>
    el(
      "li",
      {
        title: `row ${n.row}: …${n.before}[${n.label}]${n.after}…`,
        data: {
          rank: String(n.rank),
          row: String(n.row),
          distance: String(n.distance),
          id: String(n.id),
        },
      },
      el("span", { class: "rank" }, String(n.rank)),
      el("span", { class: "d" }, n.distance.toFixed(1)),
      el(
        "span",
        { class: "ctx" },
        clip(n.before, 30, true),
        el(
          "mark",
          { class: n.id === t.id ? "hit" : "", data: { label: n.label } },
          showLabel(n.label),
        ),
        clip(n.after, 18, false),
      ),
    )
  );
  $("details").replaceChildren(
    el("h2", { class: "panel-title" }, `Position ${i + 1} of ${score.lm.length}`),
    head,
    figures,
    el("h3", {}, "Top next tokens"),
    dists,
    el("h3", {}, `Retrieved contexts: ${next.neighbours.length} nearest of k = ${next.k}`),
    el(
      "p",
      { class: "muted note" },
      `Distance, then the corpus text ending at the neighbour and the token that followed it ` +
        `(green: the true token; ${hits} of these ${next.neighbours.length} vote for it).`,
    ),
    el("ol", { class: "neighbours" }, ...rows),
  );
}

// ---------------------------------------------------------------------------------------------
// Start

async function start() {
  let info;
  try {
    info = await call("/v1/info");
  } catch (e) {
    $("ds-info").textContent = `cannot reach the server: ${e.message}`;
    return;
  }
  state.info = info;
  const m = info.manifest;
  const model = m.model.path.split("/").pop();
  $("ds-info").textContent = `${info.datastore}: ${info.size.toLocaleString("en")} keys from ` +
    `${m.corpus.spec} · model ${model} · index ${m.index?.factory ?? "?"}` +
    (info.nprobe ? `, nprobe ${info.nprobe}` : "") + ` · ${info.distance} distances`;
  const d = info.defaults;
  $("lambda").value = String(d.lambda);
  $("lambda-out").value = String(d.lambda);
  $("k").value = String(d.k);
  $("k").max = String(Math.min(info.limits.maxK, info.size));
  $("temperature").value = String(d.temperature);
  $("text").maxLength = info.limits.maxTokens;
  $("text").value = SAMPLE;

  $("text").addEventListener("input", () => scheduleScore(350));
  $("lambda").addEventListener("input", () => {
    $("lambda-out").value = $("lambda").value;
    scheduleScore(120);
  });
  for (const id of ["k", "temperature"]) $(id).addEventListener("change", () => scheduleScore(0));
  // Hovering previews a token's details; a click pins them (a second click unpins).
  const tokenAt = (e) => e.target.closest?.(".tok[data-pos]");
  $("tokens").addEventListener("mouseover", (e) => {
    clearTimeout(state.hoverTimer);
    const span = tokenAt(e);
    if (!span || state.pinned) return;
    state.hoverTimer = setTimeout(() => {
      if (!state.pinned) select(Number(span.dataset.pos));
    }, 250);
  });
  $("tokens").addEventListener("click", (e) => {
    clearTimeout(state.hoverTimer);
    const span = tokenAt(e);
    if (!span) return;
    const i = Number(span.dataset.pos);
    state.pinned = !(state.pinned && state.selected === i);
    select(i);
  });
  runScore();
}

start();
