// "Why?" and "which width?" on the classify page: the saliency map of POST /explain drawn
// over the preview, and POST /predict/compare as a table. Loaded after app.js, whose
// globals (els, image, catalog, variantParams, imageForm, requestHeaders, ...) it uses;
// app.js calls explain, clearSaliency, clearComparison and markCurrentRow from here.
"use strict";

// ---- saliency ------------------------------------------------------------------------
// POST /explain answers a grid of how much hiding each region lowers the top class's
// score, over the part of the image the model saw (``region``); it is drawn on a canvas
// laid over the preview, smoothed, with what the model did not see dimmed.

let explanation = null;   // the last POST /explain answer shown, and what it was for
let explanationKey = "";
let explainSerial = 0;    // only the newest explain request may draw

// A perceptual ramp (dark purple -> red -> yellow), the one the PNG overlay uses.
const RAMP = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
  [245, 125, 21], [250, 193, 39], [252, 255, 164]];

function rampColour(v) {
  const x = Math.min(Math.max(v, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const t = x - i;
  return RAMP[i].map((c, k) => Math.round(c * (1 - t) + RAMP[i + 1][k] * t));
}

function explainUrl() {
  const params = variantParams();
  params.set("format", "json");
  return `/explain?${params}`;
}

function setSaliencyNote(text, isError = false) {
  els.saliencyNote.textContent = text;
  els.saliencyNote.classList.toggle("error-text", isError);
}

function clearSaliency() {
  explanation = null;
  explanationKey = "";
  explainSerial += 1;  // an answer still on its way is for the old image
  els.saliencyCanvas.hidden = true;
}

async function explain() {
  if (!image || !catalog || !els.saliency.checked) return;
  const url = explainUrl();
  const key = `${imageSerial} ${url}`;
  if (explanation && explanationKey === key) {
    drawSaliency();
    return;
  }
  const serial = ++explainSerial;
  setSaliencyNote("Computing the saliency map: the image is classified once per hidden region…");
  try {
    const res = await postExplain(url, serial);
    if (!res.ok) throw new Error(await errorMessage(res));
    const body = await res.json();
    if (serial !== explainSerial) return;
    explanation = body;
    explanationKey = key;
    drawSaliency();
    const s = body.saliency;
    setSaliencyNote(`Brighter: hiding that region lowers “${s.label}” (${pct(s.score)}) more. `
      + `${s.grid} × ${s.grid} grid, ${s.forwards} forward passes of ${body.variant.name}, `
      + `${ms(body.timings.total_ms)} on the server.`);
  } catch (err) {
    if (serial !== explainSerial) return;
    els.saliencyCanvas.hidden = true;
    setSaliencyNote(`No saliency map: ${err.message || err}`, true);
  }
}

// A variant runs one explain at a time (each is 50 forwards): a 503 while another is
// running says when to come back (Retry-After), and the page does, twice at most.
async function postExplain(url, serial) {
  for (let attempt = 0; ; attempt += 1) {
    const res = await fetch(url, { method: "POST", body: imageForm(), headers: requestHeaders() });
    const wait = Number(res.headers.get("Retry-After"));
    if (res.status !== 503 || attempt >= 2 || !(wait > 0 && wait <= 5)) return res;
    if (serial !== explainSerial) return res;
    setSaliencyNote(`The server is busy; trying again in ${wait} s…`);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}

function drawSaliency() {
  const canvas = els.saliencyCanvas;
  const img = els.preview;
  if (!explanation || !els.saliency.checked || img.hidden || !img.naturalWidth) {
    canvas.hidden = true;
    return;
  }
  const w = img.clientWidth;
  const h = img.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  Object.assign(canvas.style, {
    left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`, width: `${w}px`, height: `${h}px`,
  });
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const s = explanation.saliency;
  const r = s.region;
  const x0 = r.left * w;
  const y0 = r.top * h;
  const rw = (r.right - r.left) * w;
  const rh = (r.bottom - r.top) * h;
  ctx.fillStyle = "rgba(0, 0, 0, 0.4)";  // outside the model's crop
  ctx.fillRect(0, 0, w, h);
  ctx.clearRect(x0, y0, rw, rh);
  const cells = document.createElement("canvas");
  cells.width = s.grid;
  cells.height = s.grid;
  const cctx = cells.getContext("2d");
  const pixels = cctx.createImageData(s.grid, s.grid);
  s.values.forEach((row, i) => row.forEach((v, j) => {
    pixels.data.set([...rampColour(v), Math.round(15 + 190 * v ** 0.75)], 4 * (i * s.grid + j));
  }));
  cctx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(cells, x0, y0, rw, rh);
  canvas.hidden = false;
}

els.saliency.addEventListener("change", () => {
  if (els.saliency.checked) {
    explain();
  } else {
    explainSerial += 1;
    els.saliencyCanvas.hidden = true;
    setSaliencyNote("Saliency map hidden.");
  }
});
els.preview.addEventListener("load", drawSaliency);
new ResizeObserver(() => drawSaliency()).observe(els.preview);

// ---- comparison ----------------------------------------------------------------------
// POST /predict/compare: the image through every loaded variant, one row each, cheapest
// first, so the accuracy/cost trade-off of the width multiplier reads top to bottom.

function clearComparison() {
  els.compareRows.replaceChildren();
  els.compareTable.hidden = true;
  els.compareStatus.classList.remove("error-text");
}

function td(text, className = "", detail = "") {
  const cell = document.createElement("td");
  if (className) cell.className = className;
  cell.textContent = text;
  if (detail) {
    const small = document.createElement("span");
    small.className = "detail";
    small.textContent = detail;
    cell.append(small);
  }
  return cell;
}

function markCurrentRow() {
  for (const tr of els.compareRows.children) {
    tr.classList.toggle("current", tr.dataset.variant === shownVariant);
  }
}

async function compareAll() {
  if (!image || !catalog || comparing) return;
  comparing = true;
  updateSubmit();
  const serial = imageSerial;
  els.compareStatus.classList.remove("error-text");
  els.compareStatus.textContent = `Classifying with every loaded variant (${catalog.models.length})…`;
  try {
    const res = await fetch("/predict/compare?topk=1", {
      method: "POST", body: imageForm(), headers: requestHeaders(),
    });
    if (!res.ok) throw new Error(await errorMessage(res));
    const body = await res.json();
    if (serial === imageSerial) showComparison(body);
  } catch (err) {
    if (serial === imageSerial) {
      clearComparison();
      els.compareStatus.textContent = `The comparison failed: ${err.message || err}`;
      els.compareStatus.classList.add("error-text");
    }
  } finally {
    comparing = false;
    updateSubmit();
  }
}

function showComparison(body) {
  const byCost = [...body.results].sort((a, b) => (a.macs ?? Infinity) - (b.macs ?? Infinity));
  const rows = byCost.map((r) => {
    const tr = document.createElement("tr");
    const v = r.variant;
    tr.dataset.variant = v.name;
    const best = r.ok ? r.predictions[0] : null;
    tr.append(
      td(v.name, "variant", `α ${alpha(v.width)} · ${v.resolution} px · ${v.precision}`),
      td(best ? best.label : `${r.error.code}: ${r.error.message}`, best ? "" : "error-text"),
      td(best ? (best.score * 100).toFixed(1) : "—", "num"),
      td(r.ok ? r.timings.inference_ms.toFixed(1) : "—", "num"),
      td(r.macs ? String(Math.round(r.macs / 1e6)) : "—", "num wide-only"),
      td((r.params / 1e6).toFixed(2), "num wide-only"),
      td(r.accuracy ? r.accuracy.top1.toFixed(1) : "—", "num"),
    );
    return tr;
  });
  els.compareRows.replaceChildren(...rows);
  els.compareTable.hidden = false;
  markCurrentRow();
  const answered = body.results.filter((r) => r.ok).length;
  els.compareStatus.textContent = `${answered} of ${body.results.length} variants answered in `
    + `${ms(body.total_ms)} on the server (${body.decodes} decodes). Time: the model's `
    + "forward pass alone; MACs and ImageNet top-1 as their authors report them. Cheapest "
    + "first.";
}

els.compareRun.addEventListener("click", compareAll);
