// The live monitor: one strip per stream with a sweeping waveform, heart rate, quality
// and alerts, fed by one subscriber WebSocket (topics: streams, alerts, and per stream
// filtered samples, quality and beats).
//
// Drawing: samples go into a ring buffer per channel as they arrive; each animation
// frame advances a play-out cursor at the stream's own rate (a frame of jitter behind
// the newest sample, catching up gently when it falls behind) and draws only the new
// columns of a sweep display, erasing a small gap ahead of the pen, as bedside
// monitors do. A full redraw happens only on resize, a change of scale or channel.
"use strict";

const WINDOW_S = 8; // seconds across a strip
const SLACK_S = 4; // ring buffer beyond the window: backlog the play-out may have
const GAP_PX = 14; // erased band ahead of the pen
const BG = "#0b1016";
const GRID = "#16212c";
const TRACE = "#3ee07a";
const BEAT = "#e8c547";

const state = {
  streams: new Map(), // id -> Strip
  alerts: new Map(), // stream|alert|channel -> alert message
  sound: false,
  lastBeep: 0,
};

// What the tests (and a curious user in the console) can read.
const monitor = (window.vitalMonitor = {
  connection: "connecting",
  connections: 0,
  messages: 0,
  subscribed: [], // the topics the server confirmed
  beeps: 0, // alarm sounds played
  tickTimes: [], // ms the page spent drawing, per animation frame
  frames: 0,
  fps: 0,
  streams: {},
  alerts: () => [...state.alerts.values()],
  drop: () => sub.drop(),
  sub: () => sub,
});

class Strip {
  constructor(id) {
    this.id = id;
    this.fs = 0;
    this.channels = [];
    this.channel = 0;
    this.connected = false;
    this.run = null;
    this.reset();
    this.stats = monitor.streams[id] = {
      drawn: 0, received: 0, hr: null, quality: null, qualities: 0, beats: 0,
    };
    this.build();
  }

  reset() {
    this.ring = null; // one Float32Array per channel, indexed by sample index % size
    this.next = null; // index of the next sample expected
    this.cursor = 0; // play-out position (float sample index)
    this.drawn = 0; // samples up to here are on the canvas
    this.frameN = 0; // typical samples per message (EMA), the jitter to absorb
    this.beats = [];
    this.scale = { center: 0, span: 3 };
    this.needsFull = true;
  }

  build() {
    const E = Vital.el;
    this.hr = E("span", { class: "hr-value" }, "--");
    this.quality = E("span", { class: "quality q-none" }, "no quality yet");
    this.alertBox = E("div", { class: "strip-alerts" });
    this.meta = E("span", { class: "meta" });
    this.status = E("span", { class: "dot" });
    this.leads = E("span", { class: "leads" });
    this.canvas = E("canvas", { class: "wave", "data-stream": this.id });
    this.node = E("section", { class: "strip", "data-stream": this.id },
      E("header", {}, this.status, E("h2", {}, this.id), this.meta, this.leads),
      E("div", { class: "body" },
        E("div", { class: "trace" }, this.canvas),
        E("div", { class: "numbers" },
          E("div", { class: "hr" }, E("small", {}, "HR"), this.hr, E("small", {}, "bpm")),
          this.quality, this.alertBox)));
    const list = document.getElementById("strips");
    const after = [...list.children].find((n) => n.dataset.stream > this.id);
    list.insertBefore(this.node, after || null);
    document.getElementById("empty").hidden = true;
    new ResizeObserver(() => { this.needsFull = true; }).observe(this.canvas);
  }

  setFormat(fs, channels) {
    const same = fs === this.fs && channels.length === this.channels.length
      && channels.every((c, i) => c === this.channels[i]);
    if (same) return;
    this.fs = fs;
    this.channels = channels;
    this.channel = Math.min(this.channel, channels.length - 1);
    this.reset();
    this.meta.textContent = `${fs} Hz`;
    this.leads.replaceChildren(...channels.map((name, c) => Vital.el("button", {
      class: c === this.channel ? "lead on" : "lead",
      onclick: () => this.showChannel(c),
    }, name)));
  }

  showChannel(c) {
    this.channel = c;
    [...this.leads.children].forEach((b, i) => b.classList.toggle("on", i === c));
    this.needsFull = true;
  }

  setConnected(connected, run) {
    this.connected = connected;
    showCount();
    this.node.classList.toggle("offline", !connected);
    this.status.title = connected ? "connected" : "disconnected";
    if (run !== undefined && run !== null && this.run !== null && run !== this.run) {
      this.reset(); // a fresh run starts its sample count from 0 again ...
      this.stats.hr = null; // ... and its screening from scratch
      this.showHr();
      this.quality.className = "quality q-none";
      this.quality.textContent = "no quality yet";
    }
    if (run !== undefined && run !== null) this.run = run;
  }

  onSamples(msg) {
    this.setFormat(msg.fs, msg.channels);
    const ys = Vital.decodeSamples(msg);
    const n = ys[0].length;
    const size = Math.ceil(this.fs * (WINDOW_S + SLACK_S));
    if (this.ring === null) {
      this.ring = this.channels.map(() => new Float32Array(size).fill(NaN));
    }
    if (this.next === null || msg.t0 < this.next || msg.t0 - this.next > size) {
      if (this.next !== null && msg.t0 < this.next) { // a fresh run, even one whose run
        this.ring.forEach((r) => r.fill(NaN)); // number is the old one's (a restarted server
        forgetAlerts(this.id); // counts from 1 again): no one will end the old run's alerts
      }
      this.next = this.cursor = this.drawn = msg.t0; // first block, new run, or long gap
      this.needsFull = true;
    }
    for (let i = this.next; i < msg.t0; i++) { // lost frames: a break in the line
      for (const r of this.ring) r[i % size] = NaN;
    }
    for (let c = 0; c < ys.length; c++) {
      const r = this.ring[c];
      const y = ys[c];
      for (let i = 0; i < n; i++) r[(msg.t0 + i) % size] = y[i];
    }
    this.next = msg.t0 + n;
    this.frameN = this.frameN ? 0.9 * this.frameN + 0.1 * n : n;
    this.stats.received += n;
  }

  onQuality(msg) {
    const hr = typeof msg.hr === "number" ? Math.round(msg.hr) : null;
    this.stats.hr = hr;
    this.showHr();
    this.stats.qualities += 1;
    const cls = msg.class || (msg.flatline ? "flat" : "unknown");
    this.stats.quality = cls;
    this.quality.className = `quality q-${cls}`;
    const score = typeof msg.score === "number" ? ` ${Math.round(100 * msg.score)}%` : "";
    this.quality.textContent = cls + score;
  }

  onBeat(msg) {
    this.stats.beats += 1;
    this.beats.push(msg.r);
    if (this.beats.length > 64) this.beats.shift();
    if (msg.r < this.drawn && this.drawn - msg.r < this.fs * WINDOW_S && !this.needsFull) {
      this.mark(msg.r, this.geometry()); // decided after the pen passed its R peak
    }
    this.node.classList.add("beat");
    setTimeout(() => this.node.classList.remove("beat"), 120);
  }

  /** The 10-s median lags an asystole by seconds: while one is on, show no rate. */
  showHr() {
    const hr = this.asystole ? null : this.stats.hr;
    this.hr.textContent = hr === null ? "--" : String(hr);
  }

  showAlerts(list) {
    this.asystole = list.some((a) => a.alert === "asystole");
    this.showHr();
    this.node.classList.toggle("alarm", list.length > 0);
    this.alertBox.replaceChildren(...list.map((a) => Vital.el("span", { class: "badge" },
      alertLabel(a, this.channels))));
  }

  /** Advance the play-out by *dt* seconds and draw what it passed. */
  tick(dt) {
    if (this.next === null || !this.fs) return;
    const lag = Math.max(this.frameN, this.fs * 0.1); // aim one message behind the newest
    const backlog = this.next - this.cursor;
    if (backlog > this.fs * (SLACK_S - 0.5)) {
      this.cursor = this.next - lag; // far behind (a hidden tab): jump
      this.drawn = Math.floor(this.cursor);
      this.needsFull = true;
    } else {
      const speed = backlog > 2 * lag ? 1.25 : backlog > 1.5 * lag ? 1.05 : 1;
      this.cursor = Math.min(this.next, this.cursor + this.fs * dt * speed);
    }
    const to = Math.floor(this.cursor);
    this.sinceScale = (this.sinceScale || 0) + dt;
    if (this.sinceScale >= 1 && !this.needsFull) { // refit once a second
      this.sinceScale = 0;
      if (this.autoscale(to)) this.needsFull = true;
    }
    if (this.needsFull) this.redraw(to);
    else if (to > this.drawn) this.draw(this.drawn, to);
    this.stats.drawn += Math.max(0, to - this.drawn);
    this.drawn = Math.max(this.drawn, to);
  }

  geometry() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
    return { w, h, dpr, W: Math.round(this.fs * WINDOW_S) };
  }

  y(v, h) {
    return h / 2 - ((v - this.scale.center) / this.scale.span) * h;
  }

  /** Clear and draw the whole window that ends at sample *to*. */
  redraw(to) {
    this.needsFull = false;
    this.autoscale(to);
    const g = this.geometry();
    const ctx = this.canvas.getContext("2d");
    ctx.fillStyle = BG;
    ctx.fillRect(0, 0, g.w, g.h);
    this.grid(ctx, g, 0, g.w);
    this.draw(Math.max(0, to - g.W + 1), to, true);
  }

  grid(ctx, g, x0, x1) {
    ctx.fillStyle = GRID;
    const every = g.w / WINDOW_S; // one line a second
    for (let s = Math.ceil(x0 / every); s * every < x1; s++) {
      ctx.fillRect(Math.round(s * every), 0, 1, g.h);
    }
    const { center, span } = this.scale; // a line every 0.5 mV
    for (let mv = Math.ceil((center - span / 2) * 2) / 2; mv < center + span / 2; mv += 0.5) {
      ctx.fillRect(x0, Math.round(this.y(mv, g.h)), x1 - x0, 1);
    }
  }

  /** Draw samples [from, to) as new columns of the sweep, erasing the gap ahead. */
  draw(from, to, full = false) {
    const g = this.geometry();
    const ctx = this.canvas.getContext("2d");
    const size = this.ring[0].length;
    const ring = this.ring[this.channel];
    const x = (i) => ((i % g.W) / g.W) * g.w;
    if (!full) { // erase from the pen to the gap ahead of the newest column
      const a = x(from);
      const b = a + (to - from) / g.W * g.w + GAP_PX * g.dpr;
      this.erase(ctx, g, a + g.dpr, b);
    } else {
      this.erase(ctx, g, x(to), x(to) + GAP_PX * g.dpr);
    }
    ctx.strokeStyle = TRACE;
    ctx.lineWidth = 1.5 * g.dpr;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let pen = false;
    for (let i = Math.max(from - 1, 0); i < to; i++) {
      const v = ring[i % size];
      if (i % g.W === 0 || Number.isNaN(v)) pen = false; // wrap or a gap: lift the pen
      if (Number.isNaN(v)) continue;
      const px = x(i);
      const py = this.y(v, g.h);
      if (pen) ctx.lineTo(px, py);
      else ctx.moveTo(px, py);
      pen = true;
    }
    ctx.stroke();
    for (const r of this.beats) if (r >= from && r < to) this.mark(r, g);
  }

  /** A tick at the top of the strip over a beat's R peak. */
  mark(r, g) {
    const ctx = this.canvas.getContext("2d");
    ctx.fillStyle = BEAT;
    ctx.fillRect(((r % g.W) / g.W) * g.w - g.dpr, 0, 2 * g.dpr, 6 * g.dpr);
  }

  erase(ctx, g, a, b) {
    const spans = b <= g.w ? [[a, b]] : [[a, g.w], [0, b - g.w]];
    for (const [x0, x1] of spans) {
      if (x1 <= x0) continue;
      ctx.fillStyle = BG;
      ctx.fillRect(x0, 0, x1 - x0, g.h);
      this.grid(ctx, g, x0, x1);
    }
  }

  /** Fit the scale to the window (with a margin), changing it only when it is off by
   * more than a quarter, so the sweep rarely has to be redrawn. */
  autoscale(to) {
    const ring = this.ring[this.channel];
    const size = ring.length;
    const W = Math.round(this.fs * WINDOW_S);
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = Math.max(0, to - W); i < to; i++) {
      const v = ring[i % size];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) return false;
    const span = Math.max(hi - lo, 1.0) * 1.2;
    const center = (hi + lo) / 2;
    const s = this.scale;
    if (Math.abs(span / s.span - 1) > 0.25 || Math.abs(center - s.center) > s.span / 4) {
      this.scale = { center, span };
      return true;
    }
    return false;
  }
}

function showCount() {
  const all = [...state.streams.values()];
  const live = all.filter((s) => s.connected).length;
  document.getElementById("count").textContent = all.length === live
    ? `${live} stream${live === 1 ? "" : "s"}` : `${live} of ${all.length} streams connected`;
}

function alertLabel(a, channels) {
  const lead = a.channel === null || a.channel === undefined ? ""
    : ` (${(channels && channels[a.channel]) || "ch " + a.channel})`;
  return a.alert.replace("_", " ") + lead;
}

function strip(id) {
  let s = state.streams.get(id);
  if (!s) {
    s = new Strip(id);
    state.streams.set(id, s);
    sub.subscribe([`stream/${id}/filtered`, `stream/${id}/quality`, `stream/${id}/beats`]);
  }
  return s;
}

function onStatus(msg) {
  if (msg.topic === "subscriptions") monitor.subscribed = msg.topics;
  if (msg.topic === "subscriptions" || !msg.stream) return;
  if (msg.state === "connected") {
    const s = strip(msg.stream);
    if (msg.fs && msg.channels) s.setFormat(msg.fs, msg.channels);
    if (msg.run !== undefined && s.run !== null && msg.run !== s.run) {
      forgetAlerts(msg.stream); // a fresh run: the server screens it from scratch
    }
    s.setConnected(true, msg.run);
  } else if (msg.state === "disconnected") {
    const s = state.streams.get(msg.stream);
    if (s) s.setConnected(false);
  }
}

function onAlert(msg) {
  if (msg.topic !== "alerts") return; // each alert also comes on stream/<id>/quality
  const key = `${msg.stream}|${msg.alert}|${msg.channel ?? ""}`;
  if (msg.state === "start") {
    state.alerts.set(key, { ...msg, since: Date.now() });
    if (state.sound) alarmSound(true);
  } else {
    state.alerts.delete(key);
  }
  renderAlerts();
}

function forgetAlerts(stream) {
  for (const [key, a] of state.alerts) if (a.stream === stream) state.alerts.delete(key);
  renderAlerts();
}

function renderAlerts() {
  const all = [...state.alerts.values()];
  for (const s of state.streams.values()) s.showAlerts(all.filter((a) => a.stream === s.id));
  const banner = document.getElementById("alerts");
  banner.hidden = all.length === 0;
  banner.replaceChildren(...all.map((a) => {
    const s = state.streams.get(a.stream);
    return Vital.el("span", { class: "alert", "data-alert": a.alert, "data-stream": a.stream },
      `${a.stream}: ${alertLabel(a, s && s.channels)}`);
  }));
}

function alarmSound(force = false) {
  const now = performance.now();
  if (!state.sound || state.alerts.size === 0 || (!force && now - state.lastBeep < 4000)) return;
  state.lastBeep = now;
  monitor.beeps += 1;
  Vital.beep(880, 160);
  setTimeout(() => Vital.beep(660, 160), 220);
}

function onMessage(msg) {
  monitor.messages += 1;
  switch (msg.type) {
    case "samples": strip(msg.stream).onSamples(msg); break;
    case "quality": strip(msg.stream).onQuality(msg); break;
    case "beat": strip(msg.stream).onBeat(msg); break;
    case "alert": onAlert(msg); break;
    case "status": onStatus(msg); break;
    case "error": console.warn("server error", msg.code, msg.message); break;
    default: break;
  }
}

function onState(what, detail) {
  monitor.connection = what;
  monitor.connections = sub.connections;
  const pill = document.getElementById("connection");
  pill.className = `pill ${what}`;
  if (what === "open") {
    pill.textContent = "live";
    pill.title = `${detail.protocol}; ${detail.extensions || "no compression"}`;
    // The snapshot on `streams` tells which streams are connected now: mark the rest.
    for (const s of state.streams.values()) s.setConnected(false);
  } else if (what === "closed") {
    const code = detail.code ? ` (${detail.code}${detail.reason ? " " + detail.reason : ""})` : "";
    pill.textContent = `reconnecting in ${(detail.retryMs / 1000).toFixed(1)} s${code}`;
  } else {
    pill.textContent = "connecting";
  }
}

// Alerts, quality and beats missed while reconnecting are replayed (`since`); the
// waveform is not: the strip goes on from now.
const recover = (t) => t === "alerts" || t.endsWith("/quality") || t.endsWith("/beats");
const sub = new Vital.Subscriber({ onMessage, onState, recover });
sub.topics.add("streams");
sub.topics.add("alerts");

let last = performance.now();
let fpsFrames = 0;
let fpsSince = last;
function frame(now) {
  const dt = Math.min(0.25, (now - last) / 1000);
  last = now;
  const t0 = performance.now();
  for (const s of state.streams.values()) s.tick(dt);
  const spent = performance.now() - t0; // the page's own drawing time in this frame
  monitor.tickMs = monitor.tickMs ? 0.95 * monitor.tickMs + 0.05 * spent : spent;
  monitor.tickMaxMs = Math.max(monitor.tickMaxMs || 0, spent);
  monitor.tickTimes.push(spent); // the last 600 frames, for loadtests/bench_monitor.py
  if (monitor.tickTimes.length > 600) monitor.tickTimes.shift();
  monitor.frames += 1;
  fpsFrames += 1;
  if (now - fpsSince >= 1000) {
    monitor.fps = Math.round((fpsFrames * 1000) / (now - fpsSince));
    document.getElementById("fps").textContent = `${monitor.fps} fps`;
    fpsFrames = 0;
    fpsSince = now;
    alarmSound();
  }
  requestAnimationFrame(frame);
}

document.getElementById("sound").addEventListener("change", (e) => {
  state.sound = e.target.checked;
  if (state.sound) Vital.beep(660, 60); // a click unlocks audio; confirm it works
});
document.querySelectorAll("a[data-keep-token]").forEach((a) => {
  a.href = Vital.link(a.getAttribute("href"));
});
sub.start();
requestAnimationFrame(frame);
