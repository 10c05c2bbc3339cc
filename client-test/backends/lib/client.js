// socket.io-client helpers: connect with a token, collect every event, assert "exactly once".
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import { token as mint } from './cluster.js';

/** Quiet period after the last expected event, during which no duplicate may arrive. */
export const QUIET_MS = Number(process.env.QUIET_MS || 1200);
export const WAIT_MS = Number(process.env.WAIT_MS || 8000);

/** Records every event a socket receives (onAny) plus connect/disconnect. */
export class Collector {
  constructor(socket, label = 'socket') {
    this.socket = socket;
    this.label = label;
    this.events = [];
    this.lifecycle = [];
    this.waiters = new Set();
    socket.onAny((event, ...args) => this.push({ event, args }));
    socket.on('connect', () => this.lifecycle.push({ what: 'connect', at: Date.now() }));
    socket.on('disconnect', (reason) => { this.lifecycle.push({ what: 'disconnect', reason, at: Date.now() }); this.kick(); });
    socket.on('connect_error', (err) => this.lifecycle.push({ what: 'connect_error', message: err.message, at: Date.now() }));
  }

  push(e) {
    e.at = Date.now();
    this.events.push(e);
    this.kick();
  }

  kick() { for (const w of this.waiters) w(); }

  matching(pred) { return this.events.filter(pred); }

  /** Waits until `count` events match `pred`; returns them. */
  async waitFor(pred, { count = 1, timeout = WAIT_MS, what = 'event' } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.matching(pred);
      if (found.length >= count) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`${this.label}: timed out waiting for ${count}× ${what}; got ${found.length}. Last events: ${this.describe()}`);
      }
      await new Promise((ok) => {
        const w = () => { this.waiters.delete(w); clearTimeout(t); ok(); };
        const t = setTimeout(w, Math.min(left, 250));
        this.waiters.add(w);
      });
    }
  }

  async waitLifecycle(what, { after = 0, timeout = WAIT_MS } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const e = this.lifecycle.find((l) => l.what === what && l.at >= after);
      if (e) return e;
      if (Date.now() > deadline) throw new Error(`${this.label}: no ${what} within ${timeout} ms; lifecycle ${JSON.stringify(this.lifecycle)}`);
      await sleep(50);
    }
  }

  describe(n = 12) {
    return JSON.stringify(this.events.slice(-n).map(({ event, args }) => [event, ...args.map(short)]));
  }

  clear() { this.events = []; }
}

function short(v) {
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return `<binary ${v.byteLength}>`;
  const s = JSON.stringify(v);
  return s && s.length > 160 ? `${s.slice(0, 160)}…` : v;
}

/**
 * Asserts each predicate is matched by exactly one event: waits for every one of them, then a
 * quiet period, then checks that none arrived twice.
 */
export async function expectExactlyOnce(collector, preds, { quiet = QUIET_MS, timeout = WAIT_MS } = {}) {
  const list = Array.isArray(preds) ? preds : [preds];
  for (const [i, p] of list.entries()) {
    await collector.waitFor(p.pred ?? p, { timeout, what: p.what ?? `expectation #${i}` });
  }
  await sleep(quiet);
  const results = [];
  for (const [i, p] of list.entries()) {
    const got = collector.matching(p.pred ?? p);
    assert.equal(got.length, 1, `${collector.label}: ${p.what ?? `expectation #${i}`} arrived ${got.length} times: ${collector.describe()}`);
    results.push(got[0]);
  }
  return results;
}

/** Asserts that nothing matching `pred` arrives within `quiet` ms (or has arrived already). */
export async function expectNone(collector, pred, { quiet = QUIET_MS, what = 'event' } = {}) {
  await sleep(quiet);
  const got = collector.matching(pred);
  assert.equal(got.length, 0, `${collector.label}: unexpected ${what}: ${collector.describe()}`);
}

/** A notification event whose payload has `marker` in it (data.marker or top-level marker). */
export const notif = (marker) => (e) => e.event === 'notification' && hasMarker(e.args[0], marker);
export const ev = (name, marker) => (e) => e.event === name && (marker === undefined || e.args.some((a) => hasMarker(a, marker)));

export function hasMarker(v, marker) {
  if (v === null || typeof v !== 'object') return v === marker;
  if (v.marker === marker) return true;
  if (v.data && typeof v.data === 'object' && v.data.marker === marker) return true;
  return false;
}

/**
 * Connects a stock socket.io-client to `url` (query `?token=` like Flask-SocketIO clients) and
 * waits for the welcome notification. Resolves {socket, col, sid}.
 */
export async function connect(url, userId, { namespace = '/', opts = {}, tokenIn = 'query', label, claims } = {}) {
  const tok = mint(userId, claims);
  const base = {
    forceNew: true,
    reconnection: false,
    transports: ['websocket'],
    ...(tokenIn === 'query' ? { query: { token: tok } } : { auth: { token: tok } }),
    ...opts,
  };
  const target = namespace === '/' ? url : `${url}${namespace}`;
  const socket = io(target, base);
  const col = new Collector(socket, label ?? `${userId}${namespace === '/' ? '' : namespace}@${url}`);
  const [welcome] = await col.waitFor((e) => e.event === 'notification' && e.args[0]?.type === 'welcome', { what: 'welcome' });
  return { socket, col, sid: welcome.args[0].data.sid, token: tok };
}

export function closeAll(...clients) {
  for (const c of clients.flat()) {
    try { (c.socket ?? c).disconnect(); } catch { /* ignore */ }
  }
}

export function toBuffer(v) {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof ArrayBuffer) return Buffer.from(v);
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new Error(`not binary: ${JSON.stringify(v)}`);
}
