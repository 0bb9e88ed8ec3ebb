// The classify page: pick/drop/paste an image, choose a loaded variant, POST /predict.
// why.js (loaded after this file, sharing its globals) adds the saliency map and the
// comparison of every variant. Vanilla JS, no dependencies, no requests outside this origin.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("form"), drop: $("drop"), preview: $("preview"), hint: $("drop-hint"),
  noPreview: $("no-preview"), results: $("results"),
  fileName: $("file-name"), file: $("file"), camera: $("camera"),
  model: $("model"), width: $("width"), apiKey: $("api-key"), auth: $("auth"),
  submit: $("submit"), status: $("status"), error: $("error"),
  predictions: $("predictions"), meta: $("meta"), serverState: $("server-state"),
  saliency: $("saliency"), saliencyCanvas: $("saliency-canvas"), saliencyNote: $("saliency-note"),
  compareRun: $("compare-run"), compareStatus: $("compare-status"),
  compareTable: $("compare-table"), compareRows: $("compare-rows"),
};
const KEY_STORAGE = "mobilenet.apiKey";
const MODEL_ORDER = ["v1", "v2", "v3", "v3-small", "v3-large"];
const MODEL_NAMES = {
  v1: "MobileNet V1", v2: "MobileNet V2", v3: "MobileNet V3 (best loaded)",
  "v3-small": "MobileNet V3 Small", "v3-large": "MobileNet V3 Large",
};

let catalog = null;   // GET /models
let image = null;     // the File to classify
let previewUrl = null;
let busy = false;
let imageSerial = 0;      // a new image invalidates what was computed for the old one
let comparing = false;
let shownVariant = "";    // the variant of the predictions on screen

const pct = (x, digits = 1) => `${(x * 100).toFixed(digits)} %`;
const alpha = (w) => (Number.isInteger(w) ? w.toFixed(1) : String(w));
const bytes = (n) =>
  n < 1024 ? `${n} B` : n < 1048576 ? `${Math.round(n / 1024)} KB` : `${(n / 1048576).toFixed(1)} MB`;
const ms = (x) => `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`;
const variantByName = (name) => catalog.models.find((m) => m.name === name);
const top1 = (v) => (v && v.accuracy ? ` · ${v.accuracy.top1.toFixed(1)} % top-1` : "");

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

// ---- models -------------------------------------------------------------------------

async function loadModels(attempt = 0) {
  try {
    const res = await fetch("/models", { headers: { Accept: "application/json" } });
    if (!res.ok) throw new Error(await errorMessage(res));
    catalog = await res.json();
    if (!catalog.models.length) throw new Error("no model is loaded yet");
  } catch (err) {
    els.serverState.textContent = `Waiting for the server: ${err.message}`;
    setTimeout(() => loadModels(attempt + 1), Math.min(1000 * 2 ** attempt, 10000));
    return;
  }
  fillModels();
  els.serverState.textContent =
    `${catalog.models.length} variants loaded · default ${catalog.default}`;
  updateSubmit();
}

function fillModels() {
  els.model.replaceChildren(option("", `Default (${catalog.default})`));
  const names = Object.keys(catalog.aliases).sort(
    (a, b) => MODEL_ORDER.indexOf(a) - MODEL_ORDER.indexOf(b));
  for (const name of names) {
    els.model.append(option(name, `${name} · ${MODEL_NAMES[name] || name}`));
  }
  els.model.disabled = false;
  fillWidths();
}

// The width select lists the widths and resolutions the chosen model can answer with; with
// no model, every loaded one (the server then picks the most accurate model that has it).
function fillWidths() {
  const model = els.model.value;
  const arch = model ? variantByName(catalog.aliases[model]).model : null;
  const variants = catalog.models
    .filter((v) => !arch || v.model === arch)
    .sort((a, b) => b.width - a.width || b.resolution - a.resolution ||
      (b.accuracy ? b.accuracy.top1 : 0) - (a.accuracy ? a.accuracy.top1 : 0));
  els.width.replaceChildren(
    option("", model ? `Widest (${catalog.aliases[model]})` : "Automatic"));
  const seen = new Set();
  for (const v of variants) {
    const value = `${v.width}@${v.resolution}`;
    if (seen.has(value)) continue;  // two origins of one width × resolution: the server picks
    seen.add(value);
    els.width.append(option(value,
      `α ${alpha(v.width)} × ${v.resolution} px${model ? top1(v) : ""}`));
  }
  els.width.disabled = seen.size < 2;
}

// ---- image ---------------------------------------------------------------------------

function useFile(file) {
  if (!file) return;
  image = file;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  els.preview.src = previewUrl;
  els.preview.alt = `Preview of ${file.name || "the pasted image"}`;
  els.preview.hidden = false;
  els.hint.hidden = true;
  els.noPreview.hidden = true;
  els.drop.dataset.empty = "false";
  els.fileName.textContent = `${file.name || "pasted image"} · ${bytes(file.size)}`;
  imageSerial += 1;
  clearSaliency();
  clearComparison();
  updateSubmit();
  if (catalog) classify();
}

// Not every format the server reads can be shown here (TIFF), nor every file picked.
els.preview.addEventListener("error", () => {
  els.preview.hidden = true;
  els.noPreview.hidden = false;
});

for (const input of [els.file, els.camera]) {
  input.addEventListener("change", () => {
    useFile(input.files[0]);
    input.value = "";  // picking the same file again still fires "change"
  });
}

els.drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  els.drop.classList.add("dragging");
});
els.drop.addEventListener("dragleave", () => els.drop.classList.remove("dragging"));
els.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  els.drop.classList.remove("dragging");
  useFile(e.dataTransfer.files[0]);
});
// A drop that misses the zone must not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
document.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.kind === "file");
  if (item) useFile(item.getAsFile());
});

// ---- classify -----------------------------------------------------------------------

function updateSubmit() {
  els.submit.disabled = busy || !image || !catalog;
  els.saliency.disabled = !image || !catalog;
  els.compareRun.disabled = comparing || !image || !catalog;
}

function requestHeaders() {
  const headers = { Accept: "application/json" };
  const key = els.apiKey.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function imageForm() {
  const body = new FormData();
  body.append("file", image, image.name || "image");
  return body;
}

async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText}`.trim();
}

function variantParams() {
  const params = new URLSearchParams({ topk: "5" });
  if (els.model.value) params.set("model", els.model.value);
  if (els.width.value) {
    const [width, resolution] = els.width.value.split("@");
    params.set("width", width);
    params.set("resolution", resolution);
  }
  return params;
}

function predictUrl() {
  return `/predict?${variantParams()}`;
}

async function classify() {
  if (!image || busy) return;
  busy = true;
  updateSubmit();
  els.error.hidden = true;
  els.form.setAttribute("aria-busy", "true");
  els.status.textContent = "Classifying…";
  if (els.saliency.checked) explain();
  const started = performance.now();
  try {
    const res = await fetch(predictUrl(), {
      method: "POST", body: imageForm(), headers: requestHeaders(),
    });
    const roundTrip = performance.now() - started;
    if (!res.ok) {
      if (res.status === 401) els.auth.open = true;
      throw new Error(await errorMessage(res));
    }
    show(await res.json(), roundTrip);
  } catch (err) {
    showError(err.message || String(err));
  } finally {
    busy = false;
    els.form.removeAttribute("aria-busy");
    updateSubmit();
  }
}

function show(result, roundTrip) {
  const items = result.predictions.map((p) => {
    const li = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = pct(p.score);
    row.append(label, score);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(p.score * 100, 0.5)}%`;
    bar.append(fill);
    li.append(row, bar);
    return li;
  });
  els.predictions.replaceChildren(...items);
  const v = result.variant;
  const t = result.timings;
  $("meta-variant").textContent =
    `${v.name} (${v.model}, α ${alpha(v.width)}, ${v.resolution} px${top1(variantByName(v.name))})`;
  if (v.fallback) $("meta-variant").textContent += ` · nearest to ${v.fallback.asked}`;
  $("meta-backend").textContent = `${v.backend} · ${v.device} · ${v.precision}`;
  $("meta-latency").textContent = `${ms(t.total_ms)} server · ${ms(roundTrip)} round-trip`;
  $("meta-batch").textContent = `${result.batch_size} image${result.batch_size === 1 ? "" : "s"}`;
  $("meta-request").textContent = result.request_id;
  els.meta.hidden = false;
  shownVariant = v.name;
  markCurrentRow();
  const best = result.predictions[0];
  els.status.textContent = best ? `Most likely: ${best.label} (${pct(best.score)}).` : "No result.";
  revealResults();
}

// On a phone the results sit below the form: bring them into view.
function revealResults() {
  const top = els.results.getBoundingClientRect().top;
  if (top > window.innerHeight * 0.6) {
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    els.results.scrollIntoView({ block: "start", behavior: smooth ? "smooth" : "auto" });
  }
}

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = false;
  els.predictions.replaceChildren();
  els.meta.hidden = true;
  els.status.textContent = "The image could not be classified.";
  revealResults();
}

els.form.addEventListener("submit", (e) => {
  e.preventDefault();
  classify();
});
els.model.addEventListener("change", fillWidths);

// ---- API key ------------------------------------------------------------------------

try {
  els.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
} catch (_) { /* storage disabled */ }
if (els.apiKey.value) els.auth.open = true;
els.apiKey.addEventListener("input", () => {
  try {
    const key = els.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch (_) { /* storage disabled */ }
});

loadModels();
