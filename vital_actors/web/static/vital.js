// Shared by the monitor and the viewer: the token from the page's URL, HTTP calls that
// carry it, and a subscriber connection on /v1/subscribe that reconnects with backoff
// and subscribes again to everything it followed.
// Needs the vendored @msgpack/msgpack UMD build (global MessagePack) loaded first.
"use strict";

const Vital = (() => {
  const SUBPROTOCOL = "vital.v1.msgpack";
  const MAX_TOPICS = 256; // per subscribe message (docs/protocol.md, section 5)
  const token = new URLSearchParams(location.search).get("token");

  /** *url* with ?token=... added when the page was opened with one. */
  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  /** Headers for an HTTP call: the token as a bearer, when there is one. */
  function headers(extra = {}) {
    return token ? { ...extra, Authorization: "Bearer " + token } : extra;
  }

  /** GET/POST ... a JSON route; throws an Error with the server's message on failure. */
  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    const body = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const why = body && body.error ? body.error : response.statusText;
      throw new Error(`${response.status} ${why}`);
    }
    return body;
  }

  /** A link to another page of ours that keeps the token. */
  function link(path) {
    return withToken(path);
  }

  /**
   * Where a client stands on one topic (docs/protocol.md 4.4): *done*, the offset up to
   * which it has every message of *epoch*, and the offsets above it already received
   * (a topic's CRITICAL alerts can overtake its NORMAL quality events).
   */
  class Position {
    constructor(epoch, done) {
      this.epoch = epoch;
      this.done = done;
      this.ahead = new Set();
    }

    take(offset) {
      if (offset <= this.done) return;
      this.ahead.add(offset);
      while (this.ahead.delete(this.done + 1)) this.done += 1;
      if (this.ahead.size > 256) { // a hole that will not fill (dropped while slow, 4.2)
        this.done = Math.min(...this.ahead) - 1;
        while (this.ahead.delete(this.done + 1)) this.done += 1;
      }
    }
  }

  /**
   * One subscriber connection, kept open: it reconnects after any close (backoff from
   * 0.25 s doubling to 5 s, with jitter) and subscribes again to its topics.
   * onMessage(msg) gets every decoded server message; onState(state, detail) gets
   * "connecting", "open" and "closed" (detail: the close code and reason).
   * For the topics where recover(topic) is true it keeps each topic's position and
   * subscribes again with `since` (4.4), so what was published while it was away
   * (an alert, a quality event) is replayed, in order, before the live messages;
   * `recovered` holds the server's answer for each such topic.
   */
  class Subscriber {
    constructor({ onMessage, onState = () => {}, path = "/v1/subscribe",
                  recover = () => false }) {
      this.onMessage = onMessage;
      this.onState = onState;
      this.path = path;
      this.recover = recover;
      this.positions = new Map(); // topic -> Position, for the topics to recover
      this.recovered = {};
      this.topics = new Set();
      this.ws = null;
      this.attempt = 0;
      this.connections = 0;
      this.lastPong = 0;
      this.rtt = null;
      this.timer = null;
      this.pinger = null;
    }

    url() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      return withToken(`${scheme}//${location.host}${this.path}`);
    }

    start() {
      this._connect();
      return this;
    }

    subscribe(topics) {
      const fresh = topics.filter((t) => !this.topics.has(t));
      fresh.forEach((t) => this.topics.add(t));
      if (fresh.length) this._send("subscribe", fresh);
    }

    unsubscribe(topics) {
      const known = topics.filter((t) => this.topics.has(t));
      known.forEach((t) => { this.topics.delete(t); this.positions.delete(t); });
      if (known.length) this._send("unsubscribe", known);
    }

    /** Close the socket as a network failure would (for tests and the UI's button). */
    drop() {
      if (this.ws) this.ws.close(4000, "dropped by the page");
    }

    get open() {
      return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
    }

    _send(type, topics) {
      if (!this.open) return; // sent on (re)connect instead
      for (let i = 0; i < topics.length; i += MAX_TOPICS) {
        const some = topics.slice(i, i + MAX_TOPICS);
        const msg = { type, topics: some };
        if (type === "subscribe") {
          const since = {};
          for (const t of some) {
            const p = this.positions.get(t);
            if (p) since[t] = [p.epoch, p.done];
          }
          if (Object.keys(since).length) msg.since = since;
        }
        this.ws.send(MessagePack.encode(msg));
      }
    }

    /** Keep the position of *msg*'s topic (and take the server's in a reply). */
    _track(msg) {
      if (msg.type === "status" && msg.topic === "subscriptions") {
        Object.assign(this.recovered, msg.recovered || {});
        for (const [t, [epoch, offset]] of Object.entries(msg.positions || {})) {
          if (!this.recover(t) || !this.topics.has(t)) continue;
          const p = this.positions.get(t);
          if (!p || p.epoch !== epoch || !(msg.recovered || {})[t]) {
            this.positions.set(t, new Position(epoch, offset));
          }
        }
        return;
      }
      if (typeof msg.offset !== "number" || typeof msg.epoch !== "string"
          || !this.recover(msg.topic) || !this.topics.has(msg.topic)) return;
      let p = this.positions.get(msg.topic);
      if (!p || p.epoch !== msg.epoch) {
        p = new Position(msg.epoch, msg.offset - 1);
        this.positions.set(msg.topic, p);
      }
      p.take(msg.offset);
    }

    _connect() {
      this.onState("connecting", { attempt: this.attempt });
      let ws;
      try {
        ws = new WebSocket(this.url(), [SUBPROTOCOL]);
      } catch (err) {
        this._retry({ code: 0, reason: String(err) });
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        this.attempt = 0;
        this.connections += 1;
        this.lastPong = performance.now();
        this.onState("open", { protocol: ws.protocol, extensions: ws.extensions });
        this._send("subscribe", [...this.topics]);
        this.pinger = setInterval(() => this._ping(), 10000);
      };
      ws.onmessage = (event) => {
        if (typeof event.data === "string") return; // the server never sends text
        const msg = MessagePack.decode(new Uint8Array(event.data));
        this._track(msg);
        if (msg.type === "pong") {
          this.lastPong = performance.now();
          if (typeof msg.t === "number") this.rtt = this.lastPong - msg.t;
        }
        this.onMessage(msg);
      };
      ws.onclose = (event) => {
        clearInterval(this.pinger);
        if (this.ws === ws) this.ws = null;
        this._retry({ code: event.code, reason: event.reason });
      };
    }

    _ping() {
      if (!this.open) return;
      if (performance.now() - this.lastPong > 25000) {
        this.ws.close(4001, "no pong"); // a dead connection: reconnect
        return;
      }
      this.ws.send(MessagePack.encode({ type: "ping", t: performance.now() }));
    }

    _retry(detail) {
      const delay = Math.min(5000, 250 * 2 ** this.attempt) * (0.8 + 0.4 * Math.random());
      this.attempt += 1;
      this.onState("closed", { ...detail, retryMs: delay });
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this._connect(), delay);
    }
  }

  /** Sample *i* of channel *c* in mV from a `samples` message, for every i, as arrays. */
  function decodeSamples(msg) {
    const C = msg.channels.length;
    const size = { int16: 2, float32: 4, float64: 8 }[msg.dtype];
    const data = msg.data;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const n = data.byteLength / (C * size);
    const per = (x) => (Array.isArray(x) ? x : Array(C).fill(x));
    const gain = per(msg.gain);
    const base = per(msg.baseline);
    const out = [];
    for (let c = 0; c < C; c++) {
      const ys = new Float32Array(n);
      const g = gain[c];
      const b = base[c];
      let off = c * size;
      const step = C * size;
      for (let i = 0; i < n; i++, off += step) {
        const x = size === 2 ? view.getInt16(off, true)
          : size === 4 ? view.getFloat32(off, true) : view.getFloat64(off, true);
        ys[i] = (x - b) / g;
      }
      out.push(ys);
    }
    return out;
  }

  /** A short beep through WebAudio (the page asks for sound only after a click). */
  let audio = null;
  function beep(frequency = 880, ms = 180) {
    audio = audio || new AudioContext();
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = frequency;
    gain.gain.value = 0.15;
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + ms / 1000);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    node.append(...children);
    return node;
  }

  return { api, beep, decodeSamples, el, headers, link, Subscriber, token, withToken };
})();
