// Shared helpers for Herald's black-box client tests.
//
// startHerald() runs the real binary (HERALD_BIN, default <repo>/target/debug/herald) on a free
// loopback port with the HERALD__* overrides a test wants, waits for /health and returns
// {url, port, stop(), logs()}. Every server started here is killed when the process exits.
//
// Nothing here depends on wall-clock thresholds: waits are "until it happens, or a generous
// timeout", and "X did not receive Y" is proven with a marker sent after Y (per-socket delivery is
// ordered, so once the marker arrives anything sent before it would have arrived too).

import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import { spawn } from 'node:child_process';
import { after } from 'node:test';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const here = path.dirname(fileURLToPath(import.meta.url));
export const CLIENT_TEST_DIR = path.resolve(here, '..');
export const REPO_ROOT = path.resolve(here, '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN
  ? path.resolve(process.env.HERALD_BIN)
  : path.join(REPO_ROOT, 'target', 'debug', 'herald');

export const SECRET = 'client-test-secret-0123456789abcdef';
export const API_KEY = 'client-test-api-key';
export const TIMEOUT = 10_000; // generous: a "should happen" wait never comes close on a healthy run

const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts Herald. `env` holds extra HERALD__* overrides (values are strings; lists comma-separated).
 * Defaults: the test secret and API key, 127.0.0.1, a free port, RUST_LOG=warn.
 */
export async function startHerald({ env = {}, args = [], attempts = 3, port: fixedPort } = {}) {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(`Herald binary not found at ${HERALD_BIN}: run \`cargo build\` in ${REPO_ROOT} or set HERALD_BIN`);
  }
  let lastError;
  if (fixedPort) return launch(fixedPort, env, args); // e.g. a restart on the same port
  for (let attempt = 0; attempt < attempts; attempt++) {
    const port = await freePort();
    try {
      return await launch(port, env, args);
    } catch (e) {
      lastError = e;
      if (!/cannot listen|Address already in use/i.test(String(e.message))) throw e;
    }
  }
  throw lastError;
}

async function launch(port, env, args) {
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('HERALD__')) childEnv[k] = v; // the test decides every override
  }
  Object.assign(childEnv, {
    RUST_LOG: process.env.HERALD_TEST_LOG || 'warn',
    HERALD__SERVER__HOST: '127.0.0.1',
    HERALD__SERVER__PORT: String(port),
    HERALD__AUTH__JWT_SECRET: SECRET,
    HERALD__API__KEYS: API_KEY,
    HERALD__SERVER__SHUTDOWN_GRACE_SECS: '3',
    // Its own fresh data directory: the embedded store on disk, as shipped, never shared.
    HERALD__STORAGE__DATA_DIR: mkdtempSync(path.join(os.tmpdir(), 'herald-client-test-')),
    ...env,
  });
  // The shipped config.toml (repo root) gives the documented defaults; env overrides win.
  const child = spawn(HERALD_BIN, ['--config', path.join(REPO_ROOT, 'config.toml'), ...args], {
    env: childEnv,
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(child);
      resolve(exited);
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`herald exited (${JSON.stringify(exited)}) before serving:\n${output}`);
    try {
      const res = await fetch(`${url}/health`);
      if (res.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`herald did not answer /health within 30 s:\n${output}`);
    }
    await sleep(50);
  }
  return {
    url,
    port,
    child,
    logs: () => output,
    exited: () => exited,
    waitExit: () => exitPromise,
    async stop() {
      if (exited) return exited;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const r = await exitPromise;
      clearTimeout(t);
      return r;
    },
  };
}

// ---------------------------------------------------------------- tokens

let userCounter = 1000 + (process.pid % 1000) * 100;
/** A user id nobody else in this process uses (keeps tests independent). */
export function uniqueUser() {
  userCounter += 1;
  return userCounter;
}

/**
 * Signs a JWT. `claims` are used as given (add user_id yourself); `exp` defaults to now + 1 h
 * unless `exp: null` is passed (then no exp claim at all).
 */
export function mintToken(claims = {}, { secret = SECRET, algorithm = 'HS256' } = {}) {
  const body = { ...claims };
  if (!('exp' in body)) body.exp = Math.floor(Date.now() / 1000) + 3600;
  if (body.exp === null) delete body.exp;
  if (!('iat' in body)) body.iat = Math.floor(Date.now() / 1000) - 5;
  return jwt.sign(body, secret, { algorithm, noTimestamp: true });
}

export function userToken(userId, extra = {}) {
  return mintToken({ user_id: userId, ...extra });
}

/** An unsigned `alg: none` token (which Herald must refuse). */
export function algNoneToken(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = { exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(body)}.`;
}

// ---------------------------------------------------------------- HTTP API

export async function post(server, pathname, body, { key = API_KEY, raw = false, headers = {} } = {}) {
  const h = { 'content-type': 'application/json', ...headers };
  if (key !== null) h.authorization = `Bearer ${key}`;
  const res = await fetch(`${server.url}${pathname}`, {
    method: 'POST',
    headers: h,
    body: raw ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, body: json, text };
}

export const notify = (server, body, opts) => post(server, '/api/v1/notify', body, opts);
export const emit = (server, body, opts) => post(server, '/api/v1/emit', body, opts);

export async function getJson(server, pathname) {
  const res = await fetch(`${server.url}${pathname}`);
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, body: json, text, headers: res.headers };
}

// ---------------------------------------------------------------- sockets

/**
 * Buffers every occurrence of the named events on a socket (works for socket.io-client 2.x and
 * 4.x), so nothing that arrives before the test starts waiting is lost.
 */
export class Inbox {
  constructor(socket, names = ['notification']) {
    this.socket = socket;
    this.queues = new Map();
    this.waiters = new Map();
    for (const name of names) this.watch(name);
  }

  watch(name) {
    if (this.queues.has(name)) return;
    this.queues.set(name, []);
    this.waiters.set(name, []);
    this.socket.on(name, (...args) => {
      const waiters = this.waiters.get(name);
      if (waiters.length) waiters.shift()(args);
      else this.queues.get(name).push(args);
    });
  }

  /** Resolves with the argument list of the next `name` event. */
  nextArgs(name = 'notification', timeoutMs = TIMEOUT) {
    this.watch(name);
    const q = this.queues.get(name);
    if (q.length) return Promise.resolve(q.shift());
    return new Promise((resolve, reject) => {
      const waiters = this.waiters.get(name);
      const w = (args) => { clearTimeout(t); resolve(args); };
      const t = setTimeout(() => {
        const i = waiters.indexOf(w);
        if (i >= 0) waiters.splice(i, 1);
        reject(new Error(`no "${name}" event within ${timeoutMs} ms`));
      }, timeoutMs);
      waiters.push(w);
    });
  }

  /** Resolves with the first argument of the next `name` event. */
  async next(name = 'notification', timeoutMs = TIMEOUT) {
    return (await this.nextArgs(name, timeoutMs))[0];
  }

  /** Everything buffered (and not yet consumed) for `name`. */
  drain(name = 'notification') {
    this.watch(name);
    const q = this.queues.get(name);
    return q.splice(0, q.length);
  }
}

/** Resolves with the first argument of the next `name` event on `socket` (listener attached now). */
export function nextEvent(socket, name, timeoutMs = TIMEOUT) {
  return nextEventArgs(socket, name, timeoutMs).then((args) => args[0]);
}

/** Resolves with all arguments of the next `name` event on `socket`. */
export function nextEventArgs(socket, name, timeoutMs = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => { clearTimeout(t); resolve(args); };
    const t = setTimeout(() => {
      socket.off(name, handler);
      reject(new Error(`no "${name}" event within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(name, handler);
  });
}

const open = new Set();

/**
 * Creates a socket.io-client 4.x socket (no reconnection, a fresh Manager), records its
 * `notification` events from the very first, connects and waits for `connect`.
 * Resolves with {socket, inbox, welcome}; rejects with the connect_error.
 */
export async function connect(url, opts = {}, { waitWelcome = true } = {}) {
  const socket = io(url, { forceNew: true, reconnection: false, timeout: TIMEOUT, autoConnect: false, ...opts });
  open.add(socket);
  const inbox = new Inbox(socket, ['notification']);
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no connect within timeout')), TIMEOUT);
    socket.once('connect', () => { clearTimeout(t); resolve(); });
    socket.once('connect_error', (err) => { clearTimeout(t); socket.close(); reject(err); });
    socket.connect();
  });
  const welcome = waitWelcome ? await inbox.next('notification') : undefined;
  return { socket, inbox, welcome };
}

/** Connects expecting a refusal; resolves with the connect_error. */
export async function connectRefused(url, opts = {}) {
  const socket = io(url, { forceNew: true, reconnection: false, timeout: TIMEOUT, autoConnect: false, ...opts });
  open.add(socket);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('neither connect nor connect_error within timeout')), TIMEOUT);
    socket.once('connect', () => { clearTimeout(t); socket.close(); reject(new Error('connected, but a refusal was expected')); });
    socket.once('connect_error', (err) => { clearTimeout(t); socket.close(); resolve(err); });
    socket.connect();
  });
}

/** Closes every socket opened through connect()/connectRefused(). */
export function closeAll() {
  for (const s of open) {
    try { s.close(); } catch { /* ignore */ }
  }
  open.clear();
}

/**
 * Proves that `inbox` got nothing (for `name`) beyond what it already consumed: sends a marker
 * event to the socket's own sid room through the API and waits for it. Per-socket delivery is
 * ordered, so everything emitted before the marker has arrived by then. Returns the stray events.
 */
export async function strayEvents(server, inbox, sid, name = 'notification', namespace = undefined) {
  inbox.watch(name);
  inbox.watch('__marker');
  const token = `m-${Math.random().toString(36).slice(2)}`;
  const r = await emit(server, { event: '__marker', args: [token], rooms: [sid], ...(namespace ? { namespace } : {}) });
  if (r.status !== 202) throw new Error(`marker emit failed: ${r.status} ${r.text}`);
  for (;;) {
    const [got] = await inbox.nextArgs('__marker');
    if (got === token) break;
  }
  return inbox.drain(name);
}

export const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$/;

/** Transport variants to run a test under. */
export const TRANSPORTS = {
  websocket: { transports: ['websocket'] },
  'polling→websocket': {},
};

/**
 * For test files that start a server per test with its own settings: returns `server(env)`,
 * and stops every server it started (and every client) when the file's tests are done.
 */
export function serversForThisFile() {
  const servers = [];
  after(async () => {
    closeAll();
    for (const s of servers) await s.stop();
  });
  return async (env) => {
    const s = await startHerald({ env });
    servers.push(s);
    return s;
  };
}
