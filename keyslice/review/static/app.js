// keyslice review: one finding at a time, decisions by keyboard or mouse. No framework, no build step.
"use strict";

const TOKEN = document.querySelector('meta[name="keyslice-token"]').content;
const state = {
  reviewer: null, label: "", order: "uncertain", queue: [], pos: 0, item: null,
  shown: 0, z: null, history: [], busy: false, slicesAvailable: false,
};
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Keyslice-Token": TOKEN },
  };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

function say(text) { $("message").textContent = text || ""; }

function fmt(x, d = 3) { return x === null || x === undefined ? "-" : Number(x).toFixed(d); }

function showProgress(p) {
  const frac = p.total ? p.reviewed / p.total : 0;
  $("bar-fill").style.width = `${(100 * frac).toFixed(1)}%`;
  const acc = p.acceptance === null ? "-" : `${(100 * p.acceptance).toFixed(1)}%`;
  $("progress-text").textContent = `${p.reviewed} / ${p.total} reviewed \u00b7 accepted ${p.accepted} (${acc})`;
}

async function loadQueue() {
  const q = await api(`/api/queue?reviewer=${encodeURIComponent(state.reviewer)}&order=${state.order}`);
  state.queue = q.items; state.pos = 0;
  showProgress(q.progress);
  await showCurrent();
}

function zOf(k) {
  const it = state.item;
  if (state.z) return state.z[k];
  if (k === it.top1_index) return it.top1_z_mm;
  if (it.z_step_mm !== null && it.z_min_mm !== null) return it.z_min_mm + it.z_step_mm * k;
  return null;
}

function sliceUrl(k) {
  const it = state.item;
  if (k === it.top1_index && !state.slicesAvailable) return it.key_image;
  if (!state.slicesAvailable) return null;
  return `/api/slice?id=${encodeURIComponent(it.finding_id)}&index=${k}`;
}

function tag(text, cls) {
  const el = document.createElement("span");
  el.className = `tag ${cls || ""}`; el.textContent = text; return el;
}

async function showCurrent() {
  say("");
  if (state.pos >= state.queue.length) {
    $("main").hidden = true; $("actions").hidden = true; $("done").hidden = false;
    $("done-text").textContent = "Every finding of this corpus has a decision of yours. Undo (U) still works.";
    return;
  }
  $("done").hidden = true; $("main").hidden = false; $("actions").hidden = false;
  const entry = state.queue[state.pos];
  const it = await api(`/api/finding?id=${encodeURIComponent(entry.finding_id)}`);
  state.item = it; state.z = null; state.slicesAvailable = it.slices;
  $("queue-pos").textContent = `finding ${state.pos + 1} of ${state.queue.length} left \u00b7 ${it.finding_id}`;
  $("sentence").textContent = it.text;
  const tags = $("tags"); tags.replaceChildren();
  for (const o of it.organs || []) tags.append(tag(o, "organ"));
  if (it.status) tags.append(tag(it.status, it.status));
  if (it.laterality) tags.append(tag(it.laterality, ""));
  for (const m of it.measurements_mm || []) tags.append(tag(`${fmt(m, 0)} mm`, ""));
  if (it.phase_hint) tags.append(tag(`asks: ${it.phase_hint}`, "phase"));
  if (it.phase) tags.append(tag(`series: ${it.phase}`, "phase"));
  const meta = $("meta"); meta.replaceChildren();
  const rows = [["model", it.model_id], ["weights", (it.weights_sha256 || "").slice(0, 12)], ["series", it.series_id],
    ["kernel", it.kernel || "-"], ["thickness", it.slice_thickness_mm ? `${fmt(it.slice_thickness_mm, 1)} mm` : "-"],
    ["top-1 score", fmt(it.top1_score)], ["margin", fmt(it.margin)], ["peakedness", fmt(it.peakedness, 2)],
    ["organ range", it.restricted_to ? `${it.restricted_to} ${fmt(it.z_range_mm[0], 0)}..${fmt(it.z_range_mm[1], 0)} mm` : "-"]];
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    meta.append(dt, dd);
  }
  $("flag").hidden = it.uncertain !== true;
  $("overlay-window").textContent = `window ${it.window}`;
  renderThumbs();
  showSlice(it.top1_index);
  if (it.slices) {
    api(`/api/geometry?id=${encodeURIComponent(it.finding_id)}`).then((g) => {
      if (state.item === it) { state.z = g.z_mm; showSlice(state.shown); }
    }).catch((e) => say(e.message));
  }
  const next = state.queue[state.pos + 1];  // warm the next finding's key image
  if (next) api(`/api/finding?id=${encodeURIComponent(next.finding_id)}`).then((n) => { new Image().src = n.key_image; }).catch(() => {});
}

function renderThumbs() {
  const it = state.item, box = $("thumbs"); box.replaceChildren();
  it.topk_indices.forEach((k, i) => {
    const b = document.createElement("button");
    b.className = "thumb" + (i === 0 ? " top1" : ""); b.dataset.index = k;
    const url = sliceUrl(k);
    if (url) { const img = document.createElement("img"); img.loading = "lazy"; img.src = url; img.alt = `slice ${k}`; b.append(img); }
    else b.classList.add("noimg");
    const cap = document.createElement("span"); cap.className = "cap";
    cap.textContent = `${i + 1} \u00b7 slice ${k} \u00b7 ${fmt(it.topk_scores[i])}`;
    b.append(cap);
    b.addEventListener("click", () => showSlice(k));
    box.append(b);
  });
}

function showSlice(k) {
  const it = state.item;
  if (!it) return;
  k = Math.max(0, Math.min(it.n_slices - 1, k));
  const url = sliceUrl(k);
  if (!url) { say("without --input only the key slice and the top-k positions are known"); k = it.topk_indices.includes(k) ? k : it.top1_index; }
  state.shown = k;
  const img = $("slice"), u = sliceUrl(k);
  if (u && img.getAttribute("src") !== u) img.src = u;
  const z = zOf(k);
  $("overlay-slice").textContent = `slice ${k + 1} / ${it.n_slices}` + (z === null || z === undefined ? "" : ` \u00b7 z ${fmt(z, 1)} mm`);
  $("overlay-key").textContent = k === it.top1_index ? "\u2605 key slice" : "";
  $("image-wrap").classList.toggle("key", k === it.top1_index);
  for (const b of document.querySelectorAll(".thumb")) b.classList.toggle("active", Number(b.dataset.index) === k);
  drawCurve();
}

function drawCurve() {
  const it = state.item, svg = $("curve"), NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const n = it.n_slices, W = 1000, H = 160, pad = 8;
  const x = (k) => (n > 1 ? (k / (n - 1)) * (W - 2 * pad) + pad : W / 2);
  const el = (name, attrs) => { const e = document.createElementNS(NS, name); for (const [a, v] of Object.entries(attrs)) e.setAttribute(a, v); svg.append(e); return e; };
  if (it.z_range_mm) {
    const ks = [...Array(n).keys()].filter((k) => { const z = zOf(k); return z !== null && z !== undefined && z >= it.z_range_mm[0] - 1e-3 && z <= it.z_range_mm[1] + 1e-3; });
    if (ks.length) el("rect", { class: "organ", x: x(ks[0]) - 2, y: 0, width: Math.max(4, x(ks[ks.length - 1]) - x(ks[0]) + 4), height: H });
  }
  const c = it.curve;
  if (c && c.length === n) {
    const lo = Math.min(...c), hi = Math.max(...c), span = hi - lo || 1;
    const y = (v) => H - pad - ((v - lo) / span) * (H - 2 * pad);
    el("polyline", { class: "line", points: c.map((v, k) => `${x(k).toFixed(1)},${y(v).toFixed(1)}`).join(" ") });
  }
  for (const k of it.topk_indices.slice(1)) el("line", { class: "topk", x1: x(k), x2: x(k), y1: 0, y2: H });
  el("line", { class: "top1", x1: x(it.top1_index), x2: x(it.top1_index), y1: 0, y2: H });
  el("line", { class: "cur", x1: x(state.shown), x2: x(state.shown), y1: 0, y2: H });
}

async function decide(kind) {
  if (state.busy) return;
  if (kind === "undo") return undo();
  const it = state.item;
  if (!it) return;
  let decision = kind, chosen;
  if (kind === "choose") {
    if (state.shown === it.top1_index) decision = "accept";
    else chosen = state.shown;
  }
  state.busy = true;
  try {
    const res = await api("/api/decision", {
      reviewer: state.reviewer, finding_id: it.finding_id, series_id: it.series_id,
      selection_sha256: it.selection_sha256, decision, chosen_index: chosen,
    });
    state.history.push({ review_id: res.review_id, finding_id: it.finding_id, entry: state.queue[state.pos], decision });
    showProgress(res.progress);
    if (decision === "skip") state.queue.push(state.queue[state.pos]);
    state.queue.splice(state.pos, 1);
    await showCurrent();
  } catch (e) { say(`not saved: ${e.message}`); }
  finally { state.busy = false; }
}

async function undo() {
  const last = state.history.pop();
  if (!last) { say("nothing to undo in this session"); return; }
  state.busy = true;
  try {
    const series = state.item && state.item.finding_id === last.finding_id ? state.item.series_id : null;
    const info = series ? state.item : await api(`/api/finding?id=${encodeURIComponent(last.finding_id)}`);
    const res = await api("/api/decision", {
      reviewer: state.reviewer, finding_id: last.finding_id, series_id: info.series_id,
      selection_sha256: info.selection_sha256, decision: "undo", undoes: last.review_id,
    });
    showProgress(res.progress);
    if (last.decision === "skip") {
      const i = state.queue.lastIndexOf(last.entry);
      if (i >= 0) state.queue.splice(i, 1);
    }
    state.queue.splice(state.pos, 0, last.entry);
    await showCurrent();
    say(`undone: ${last.decision}`);
  } catch (e) { state.history.push(last); say(`undo failed: ${e.message}`); }
  finally { state.busy = false; }
}

const KEYS = { a: "accept", r: "reject", c: "choose", n: "not_visible", x: "not_visible", s: "skip", u: "undo" };

document.addEventListener("keydown", (ev) => {
  if (!state.reviewer || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
  const key = ev.key;
  if ((ev.ctrlKey || ev.metaKey) && key.toLowerCase() === "z") { ev.preventDefault(); decide("undo"); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (KEYS[key.toLowerCase()]) { ev.preventDefault(); decide(KEYS[key.toLowerCase()]); return; }
  if (!state.item) return;
  const step = { ArrowUp: -1, ArrowLeft: -1, k: -1, ArrowDown: 1, ArrowRight: 1, j: 1, PageUp: -10, PageDown: 10 }[key];
  if (step) { ev.preventDefault(); showSlice(state.shown + step); return; }
  if (key === "Home" || key === "0") { ev.preventDefault(); showSlice(state.item.top1_index); return; }
  if (/^[1-9]$/.test(key)) {
    const k = state.item.topk_indices[Number(key) - 1];
    if (k !== undefined) { ev.preventDefault(); showSlice(k); }
  }
});

function init() {
  $("version").textContent = document.querySelector('meta[name="keyslice-version"]').content;
  $("image-wrap").addEventListener("wheel", (ev) => {
    if (!state.item) return;
    ev.preventDefault(); showSlice(state.shown + (ev.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  $("curve").addEventListener("click", (ev) => {
    if (!state.item) return;
    const r = $("curve").getBoundingClientRect();
    const frac = (ev.clientX - r.left) / r.width;
    showSlice(Math.round(((frac * 1000 - 8) / (1000 - 16)) * (state.item.n_slices - 1)));
  });
  for (const b of document.querySelectorAll("footer button")) b.addEventListener("click", () => decide(b.dataset.decision));
  $("order").addEventListener("change", (ev) => { state.order = ev.target.value; ev.target.blur(); loadQueue().catch((e) => say(e.message)); });
  const saved = sessionStorage.getItem("keyslice-reviewer-name");
  if (saved) $("name").value = saved;
  $("name").focus();
  $("start-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    try {
      const s = await api("/api/session", { name });
      sessionStorage.setItem("keyslice-reviewer-name", name);
      state.reviewer = s.reviewer; state.label = s.label;
      $("reviewer").textContent = `${s.label} \u00b7 ${s.reviewer}`;
      $("start").hidden = true; $("name").blur();
      await loadQueue();
    } catch (e) { alert(e.message); }
  });
}

document.addEventListener("DOMContentLoaded", init);
