// The recording viewer: pick a recording, zoom and pan through it with the server's
// min/max envelopes (GET /api/v1/recordings/{id}/view), beats and alerts of a
// processing job's result overlaid, jobs with live progress (topic job/<id>) and a
// cancel button, and uploads with a progress bar.
//
// Zooming stays smooth because the last envelope is redrawn at once under the new
// mapping (its points carry their frame index), while a debounced request fetches the
// window one screen wider on each side at the screen's resolution; a request that a
// newer one supersedes is aborted.
"use strict";

const MIN_FRAMES = 32; // the closest zoom: this many samples across the chart
const TIME_STEPS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600,
  900, 1800, 3600, 7200, 14400, 28800];
const $ = (id) => document.getElementById(id);
const chart = $("chart");
const overview = $("overview");

const viewer = (window.vitalViewer = {
  fetches: 0, // envelope requests sent
  views: [], // the last few: {start, end, points, mode}
  recording: null,
  jobs: {},
  events: null,
});

let rec = null; // the chosen recording's metadata
let channel = 0;
let view = { start: 0, end: 1 }; // visible frames [start, end)
let data = null; // the last envelope, covering more than the view
let events = null; // beats and alerts over data's range
let whole = null; // the envelope of the whole recording, for the overview
let pending = null; // AbortController of the request in flight
let fetchTimer = null;
let drawQueued = false;

// --- recordings -------------------------------------------------------------------------

function duration(s, fine = false) {
  if (fine) { // below a second: m:ss.mmm
    const ms = Math.round(s * 1000);
    const m = Math.floor(ms / 60000);
    return `${m}:${((ms - 60000 * m) / 1000).toFixed(3).padStart(6, "0")}`;
  }
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`
    : `${m}:${String(sec).padStart(2, "0")}`;
}

async function loadRecordings(want) {
  const { recordings } = await Vital.api("/api/v1/recordings");
  recordings.sort((a, b) => b.created - a.created);
  const select = $("recording");
  if (!recordings.length) return;
  select.replaceChildren(...recordings.map((r) => Vital.el("option", { value: r.id },
    `${r.job ? `${r.id} (${r.source_name} processed)` : r.source_name || r.id}`
    + ` · ${duration(r.duration_s)} · ${r.channels.length} ch @ ${r.fs} Hz`)));
  const id = want || (rec && rec.id) || recordings[0].id;
  select.value = id;
  if (!rec || rec.id !== id) await choose(id);
}

async function choose(id) {
  rec = await Vital.api(`/api/v1/recordings/${encodeURIComponent(id)}`);
  viewer.recording = id;
  channel = 0;
  $("recording").value = id;
  $("channel").replaceChildren(...rec.channels.map((name, c) =>
    Vital.el("option", { value: String(c) }, name)));
  view = { start: 0, end: rec.frames };
  data = events = whole = null;
  fetchWhole();
  requestView(true);
}

async function fetchWhole() {
  const id = rec.id;
  const points = Math.max(2, Math.round(overview.clientWidth || 800));
  const got = await Vital.api(viewUrl(0, rec.frames, points));
  if (rec && rec.id === id) {
    whole = got;
    queueDraw();
  }
}

function viewUrl(start, end, points) {
  return `/api/v1/recordings/${encodeURIComponent(rec.id)}/view?channel=${channel}`
    + `&start=${start}&end=${end}&points=${points}`;
}

// --- fetching the view ------------------------------------------------------------------

/** The window to fetch for the view: one screen more on each side, at screen resolution. */
function wanted() {
  const width = view.end - view.start;
  const px = Math.max(100, chart.clientWidth || 800);
  const start = Math.max(0, Math.floor(view.start - width));
  const end = Math.min(rec.frames, Math.ceil(view.end + width));
  const points = Math.min(100000, Math.max(2, Math.round((px * (end - start)) / width)));
  return { start, end, points };
}

/** Whether the data we have covers the view at a resolution close to the screen's. */
function covered() {
  if (!data || data.recording !== rec.id || data.channel !== channel) return false;
  if (view.start < data.start || view.end > data.end) return false;
  if (data.mode === "raw") return true; // every sample: exact at any zoom
  const want = (view.end - view.start) / Math.max(100, chart.clientWidth || 800);
  const have = (data.end - data.start) / data.points;
  return have <= want * 1.5 && have >= want / 3;
}

function requestView(now = false) {
  queueDraw();
  clearTimeout(fetchTimer);
  fetchTimer = setTimeout(fetchView, now ? 0 : 60);
}

async function fetchView() {
  if (!rec || covered()) return;
  if (pending) pending.abort();
  const controller = (pending = new AbortController());
  const q = wanted();
  const t0 = performance.now();
  viewer.fetches += 1;
  try {
    const [got, ev] = await Promise.all([ // the trace and its overlay, shown together
      Vital.api(viewUrl(q.start, q.end, q.points), { signal: controller.signal }),
      Vital.api(`/ui/recordings/${encodeURIComponent(rec.id)}/events`
        + `?start=${q.start}&end=${q.end}`, { signal: controller.signal }),
    ]);
    data = { ...got, points: q.points };
    events = ev.available ? ev : null;
    viewer.events = events && { beats: ev.beat_count, alerts: ev.alerts.length };
    viewer.views.push({ start: got.start, end: got.end, points: q.points, mode: got.mode,
      ms: performance.now() - t0 }); // request to data in hand (envelope and overlay)
    if (viewer.views.length > 20) viewer.views.shift();
    $("overlay-info").textContent = events
      ? `${ev.beat_count} beats, ${ev.alerts.length} alerts in view` : "";
    queueDraw();
  } catch (err) {
    if (err.name !== "AbortError") $("range").textContent = `view failed: ${err.message}`;
  } finally {
    if (pending === controller) pending = null;
  }
}

// --- drawing ----------------------------------------------------------------------------

function queueDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    draw();
    drawOverview();
  });
}

function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  return { w, h, dpr, ctx: canvas.getContext("2d") };
}

function yRange(d, start, end) {
  let lo = Infinity;
  let hi = -Infinity;
  const lows = d.mode === "minmax" ? d.min : d.y;
  const highs = d.mode === "minmax" ? d.max : d.y;
  for (let i = 0; i < d.t.length; i++) {
    if (d.t[i] < start || d.t[i] > end) continue;
    if (lows[i] < lo) lo = lows[i];
    if (highs[i] > hi) hi = highs[i];
  }
  if (!Number.isFinite(lo)) return [-1, 1];
  const pad = Math.max(0.1, (hi - lo) * 0.08);
  return [lo - pad, hi + pad];
}

function draw() {
  const { w, h, dpr, ctx } = fit(chart);
  ctx.fillStyle = "#0b1016";
  ctx.fillRect(0, 0, w, h);
  if (!rec) return;
  const width = view.end - view.start;
  const X = (t) => ((t - view.start) / width) * w;
  const d = data && data.recording === rec.id && data.channel === channel ? data : null;
  const [lo, hi] = d ? yRange(d, view.start, view.end) : [-1, 1];
  const Y = (v) => h - ((v - lo) / (hi - lo)) * h;
  grid(ctx, w, h, dpr, X, Y, lo, hi);
  if (events) alertBands(ctx, w, h, dpr, X);
  if (d) trace(ctx, d, w, dpr, X, Y);
  if (events) beatTicks(ctx, w, dpr, X);
  const s = (f) => duration(f / rec.fs, width < 10 * rec.fs);
  $("range").textContent = `${s(view.start)} – ${s(view.end)} (${duration(width / rec.fs)}`
    + `${d ? ", " + d.mode : ""})`;
}

function grid(ctx, w, h, dpr, X, Y, lo, hi) {
  const seconds = (view.end - view.start) / rec.fs;
  const step = TIME_STEPS.find((s) => seconds / s <= 12) || 28800;
  ctx.fillStyle = "#16212c";
  ctx.font = `${11 * dpr}px system-ui`;
  for (let t = Math.ceil(view.start / rec.fs / step) * step; t * rec.fs < view.end; t += step) {
    const x = Math.round(X(t * rec.fs));
    ctx.fillStyle = "#16212c";
    ctx.fillRect(x, 0, dpr, h);
    ctx.fillStyle = "#7d8b99";
    ctx.fillText(duration(t, step < 1), x + 3 * dpr, h - 4 * dpr);
  }
  const mvStep = [0.1, 0.2, 0.5, 1, 2, 5, 10].find((s) => (hi - lo) / s <= 8) || 20;
  for (let v = Math.ceil(lo / mvStep) * mvStep; v < hi; v += mvStep) {
    const y = Math.round(Y(v));
    ctx.fillStyle = "#16212c";
    ctx.fillRect(0, y, w, dpr);
    ctx.fillStyle = "#7d8b99";
    ctx.fillText(`${+v.toFixed(2)} mV`, 3 * dpr, y - 3 * dpr);
  }
}

function trace(ctx, d, w, dpr, X, Y) {
  ctx.fillStyle = ctx.strokeStyle = "#3ee07a";
  if (d.mode === "minmax") { // one bar from min to max per point
    for (let i = 0; i < d.t.length; i++) { // whole pixels: no seams between the bars
      const x0 = Math.floor(X(d.t[i]));
      const x1 = Math.floor(i + 1 < d.t.length ? X(d.t[i + 1]) : X(d.end));
      if (x1 < 0 || x0 > w) continue;
      const top = Math.floor(Y(d.max[i]));
      ctx.fillRect(x0, top, Math.max(1, x1 - x0), Math.max(dpr, Math.ceil(Y(d.min[i])) - top));
    }
    return;
  }
  ctx.lineWidth = 1.5 * dpr;
  ctx.beginPath();
  for (let i = 0; i < d.t.length; i++) {
    const x = X(d.t[i]);
    if (i === 0) ctx.moveTo(x, Y(d.y[i]));
    else ctx.lineTo(x, Y(d.y[i]));
  }
  ctx.stroke();
}

function alertBands(ctx, w, h, dpr, X) {
  let k = 0; // labels of overlapping alerts one under another
  for (const a of events.alerts) {
    const x0 = Math.max(0, X(a.start));
    const x1 = Math.min(w, X(a.end === null ? rec.frames : a.end));
    if (x1 < 0 || x0 > w) continue;
    ctx.fillStyle = "rgba(255, 77, 79, 0.18)";
    ctx.fillRect(x0, 0, Math.max(2 * dpr, x1 - x0), h);
    ctx.fillStyle = "#ff4d4f";
    ctx.font = `bold ${11 * dpr}px system-ui`;
    const lead = a.channel === null ? "" : ` (${rec.channels[a.channel] || a.channel})`;
    ctx.fillText(a.alert.replace("_", " ") + lead, x0 + 3 * dpr, (24 + 14 * (k++ % 6)) * dpr);
  }
}

function beatTicks(ctx, w, dpr, X) { // above the trace (yRange leaves 8% at the top)
  ctx.fillStyle = "#e8c547";
  const dense = events.beats.length * ((view.end - view.start) / (events.end - events.start))
    > w / (4 * dpr);
  for (const r of dense ? [] : events.beats) { // too dense to tell apart: the count says it
    const x = X(r);
    if (x >= 0 && x <= w) ctx.fillRect(x - dpr, 2 * dpr, 2 * dpr, 8 * dpr);
  }
}

function drawOverview() {
  const { w, h, dpr, ctx } = fit(overview);
  ctx.fillStyle = "#0b1016";
  ctx.fillRect(0, 0, w, h);
  if (!rec || !whole || whole.channel !== channel) return;
  const [lo, hi] = yRange(whole, 0, rec.frames);
  const X = (t) => (t / rec.frames) * w;
  const Y = (v) => h - ((v - lo) / (hi - lo)) * h;
  ctx.fillStyle = "#2a7a4c";
  const lows = whole.mode === "minmax" ? whole.min : whole.y;
  const highs = whole.mode === "minmax" ? whole.max : whole.y;
  for (let i = 0; i < whole.t.length; i++) {
    const top = Y(highs[i]);
    const x = Math.floor(X(whole.t[i]));
    ctx.fillRect(x, Math.floor(top), Math.max(1, Math.floor(X(whole.t[i + 1] ?? rec.frames)) - x),
      Math.max(dpr, Math.ceil(Y(lows[i]) - top)));
  }
  ctx.fillStyle = "rgba(90, 169, 255, 0.25)";
  ctx.strokeStyle = "#5aa9ff";
  const x0 = X(view.start);
  const x1 = Math.max(x0 + 2 * dpr, X(view.end));
  ctx.fillRect(x0, 0, x1 - x0, h);
  ctx.strokeRect(x0, 0.5, x1 - x0, h - 1);
}

// --- zoom and pan -----------------------------------------------------------------------

function setView(start, width) {
  width = Math.min(rec.frames, Math.max(Math.min(MIN_FRAMES, rec.frames), width));
  start = Math.min(rec.frames - width, Math.max(0, start));
  view = { start, end: start + width };
  requestView();
}

function zoom(factor, at = 0.5) {
  if (!rec) return;
  const width = view.end - view.start;
  const focus = view.start + at * width;
  const next = width * factor;
  setView(focus - at * next, next);
}

chart.addEventListener("wheel", (e) => {
  e.preventDefault();
  const box = chart.getBoundingClientRect();
  zoom(Math.exp(e.deltaY * 0.002), (e.clientX - box.left) / box.width);
}, { passive: false });

let drag = null;
chart.addEventListener("pointerdown", (e) => {
  if (!rec) return;
  drag = { x: e.clientX, start: view.start };
  chart.setPointerCapture(e.pointerId);
  chart.classList.add("dragging");
});
chart.addEventListener("pointermove", (e) => {
  if (!drag) return;
  const width = view.end - view.start;
  setView(drag.start - ((e.clientX - drag.x) / chart.clientWidth) * width, width);
});
chart.addEventListener("pointerup", () => {
  drag = null;
  chart.classList.remove("dragging");
});
overview.addEventListener("click", (e) => {
  if (!rec) return;
  const box = overview.getBoundingClientRect();
  const width = view.end - view.start;
  setView(((e.clientX - box.left) / box.width) * rec.frames - width / 2, width);
});
document.addEventListener("keydown", (e) => {
  if (!rec || e.target.tagName === "INPUT") return;
  const width = view.end - view.start;
  if (e.key === "ArrowLeft") setView(view.start - width * 0.2, width);
  else if (e.key === "ArrowRight") setView(view.start + width * 0.2, width);
  else if (e.key === "+" || e.key === "=") zoom(0.5);
  else if (e.key === "-") zoom(2);
});
$("zoom-in").addEventListener("click", () => zoom(0.5));
$("zoom-out").addEventListener("click", () => zoom(2));
$("fit").addEventListener("click", () => rec && setView(0, rec.frames));
$("recording").addEventListener("change", (e) => e.target.value && choose(e.target.value));
$("channel").addEventListener("change", (e) => {
  channel = Number(e.target.value);
  whole = null;
  fetchWhole();
  requestView(true);
});
new ResizeObserver(() => requestView()).observe(chart);

// --- jobs -------------------------------------------------------------------------------

const sub = new Vital.Subscriber({
  onMessage: (msg) => {
    if (msg.type === "progress") showJob(msg);
    // Subscribed (again): what a job did before that is only in GET /api/v1/jobs/<id>.
    if (msg.type === "status" && msg.topic === "subscriptions") refreshActiveJobs();
  },
  onState: (what, detail) => {
    const pill = $("connection");
    pill.className = `pill ${what}`;
    pill.textContent = what === "open" ? "live" : what === "closed"
      ? `reconnecting in ${(detail.retryMs / 1000).toFixed(1)} s` : "connecting";
  },
}).start();

function jobRow(id) {
  const E = Vital.el;
  const row = E("tr", { "data-job": id });
  row.cells_ = {
    recording: E("td"), state: E("td", { class: "state" }),
    bar: E("progress", { max: "1", value: "0" }), percent: E("span"), rate: E("td"),
    result: E("td"), cancel: E("button", { class: "cancel", onclick: () => cancelJob(id) }, "cancel"),
  };
  const c = row.cells_;
  row.append(E("td", {}, id), c.recording, c.state, E("td", {}, c.bar, c.percent), c.rate,
    c.result, E("td", {}, c.cancel));
  $("jobs").tBodies[0].prepend(row);
  return row;
}

const ENDED = new Set(["done", "failed", "cancelled"]);

/** Show a job (from GET or a progress event), updating its row in place, so that its
 * cancel button stays put while the progress moves. */
function showJob(job) {
  const known = viewer.jobs[job.id] || {};
  // A job that ended stays ended: a progress event or a GET answer sent before the end
  // can arrive after it (another connection), and would bring back "running" for good.
  if (ENDED.has(known.state) && !ENDED.has(job.state)) return;
  const merged = (viewer.jobs[job.id] = { ...known, ...job });
  const row = document.querySelector(`#jobs tr[data-job="${CSS.escape(job.id)}"]`)
    || jobRow(job.id);
  const c = row.cells_;
  const active = merged.state === "queued" || merged.state === "running";
  c.recording.textContent = (merged.spec && merged.spec.recording) || "";
  c.state.textContent = merged.state;
  c.bar.value = merged.progress || 0;
  c.percent.textContent = ` ${Math.round(100 * (merged.progress || 0))}%`;
  c.rate.textContent = merged.rate ? `${(merged.rate / 1e3).toFixed(0)} k frames/s` : "";
  c.cancel.disabled = !active;
  if (merged.result && !c.result.firstChild) {
    c.result.append(Vital.el("a", {
      href: "#", onclick: (e) => { e.preventDefault(); loadRecordings(merged.result); },
    }, merged.result));
  } else if (merged.error) {
    c.result.replaceChildren(Vital.el("span", { class: "error" }, merged.error));
  }
  if (active) sub.subscribe([`job/${job.id}`]);
  else {
    sub.unsubscribe([`job/${job.id}`]);
    if (merged.state === "done" && !known.doneSeen) {
      merged.doneSeen = true;
      loadRecordings().catch(() => {}); // its result is a new recording
    }
  }
}

function refreshActiveJobs() {
  for (const job of Object.values(viewer.jobs)) {
    if (job.state !== "queued" && job.state !== "running") continue;
    Vital.api(`/api/v1/jobs/${encodeURIComponent(job.id)}`).then(showJob, () => {});
  }
}

async function loadJobs() {
  const { jobs } = await Vital.api("/api/v1/jobs");
  jobs.sort((a, b) => a.created - b.created).forEach(showJob);
}

async function cancelJob(id) {
  try {
    showJob(await Vital.api(`/api/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
  } catch (err) {
    alert(`cancel failed: ${err.message}`);
  }
}

$("process").addEventListener("click", async () => {
  if (!rec) return;
  try {
    const job = await Vital.api("/api/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ recording: rec.id }),
    });
    showJob(job);
  } catch (err) {
    alert(`could not start the job: ${err.message}`);
  }
});

// --- upload -----------------------------------------------------------------------------

const FORMATS = { npy: "npy", csv: "csv", edf: "edf", zip: "wfdb", tar: "wfdb", gz: "wfdb", tgz: "wfdb" };

function upload() {
  const file = $("file").files[0];
  if (!file) return;
  const ext = file.name.split(".").pop().toLowerCase();
  const query = new URLSearchParams({ name: file.name });
  if (FORMATS[ext]) query.set("format", FORMATS[ext]);
  if ($("fs").value) query.set("fs", $("fs").value);
  const xhr = new XMLHttpRequest();
  const bar = $("upload-progress");
  const status = $("upload-status");
  const t0 = performance.now();
  xhr.open("POST", `/api/v1/recordings?${query}`);
  for (const [k, v] of Object.entries(Vital.headers())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    bar.value = e.loaded / e.total;
    const mbs = e.loaded / 1e6 / Math.max(0.001, (performance.now() - t0) / 1000);
    status.textContent = `${(e.loaded / 1e6).toFixed(1)} of ${(e.total / 1e6).toFixed(1)} MB`
      + ` (${mbs.toFixed(1)} MB/s)`;
  };
  xhr.onload = () => {
    $("upload").disabled = false;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 201) {
      bar.value = 1;
      status.textContent = `uploaded ${body.id}: ${duration(body.duration_s)}, `
        + `${body.channels.length} channels at ${body.fs} Hz`;
      status.dataset.uploaded = body.id;
      loadRecordings(body.id);
    } else {
      status.innerHTML = "";
      status.append(Vital.el("span", { class: "error" },
        `refused (${xhr.status}): ${body && body.error ? body.error : xhr.statusText}`));
    }
  };
  xhr.onerror = () => {
    $("upload").disabled = false;
    status.textContent = "upload failed: network error";
  };
  bar.hidden = false;
  bar.value = 0;
  $("upload").disabled = true;
  xhr.send(file);
}
$("upload").addEventListener("click", upload);

document.querySelectorAll("a[data-keep-token]").forEach((a) => {
  a.href = Vital.link(a.getAttribute("href"));
});
loadRecordings(new URLSearchParams(location.search).get("recording")).catch((err) => {
  $("range").textContent = `could not list recordings: ${err.message}`;
});
loadJobs().catch(() => {});
