// Starts a private redis-server and N real Herald processes on free ports, and stops them all
// (also when a test fails: every process is registered and killed on exit).
import { spawn, execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import jwt from 'jsonwebtoken';

export const HERE = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = resolve(HERE, '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN || join(REPO, 'target', 'debug', 'herald');
export const RUN_DIR = process.env.BACKENDS_RUN_DIR || join(HERE, '.run');
export const JWT_SECRET = 'backends-test-secret';
export const API_KEY = 'backends-test-key';

const children = new Set();

/** Whether a child process has ended (a signal-killed child has exitCode null). */
export function hasExited(proc) { return !proc || proc.exitCode !== null || proc.signalCode !== null; }

/** Sends `signal` and resolves when the process has ended (SIGKILL after `graceMs`). */
export async function stopProcess(proc, signal = 'SIGKILL', graceMs = 5000) {
  if (hasExited(proc)) return;
  const exited = new Promise((ok) => proc.once('exit', ok));
  proc.kill(signal);
  const t = setTimeout(() => { if (!hasExited(proc)) proc.kill('SIGKILL'); }, graceMs);
  await exited;
  clearTimeout(t);
}
function killAll() {
  for (const child of children) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
  children.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(130); });

/** A TCP port nobody listens on right now. */
export async function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** Spawns a long-lived process whose output goes to a log file under RUN_DIR. */
export function spawnLogged(name, cmd, args, env = {}) {
  mkdirSync(RUN_DIR, { recursive: true });
  const logPath = join(RUN_DIR, `${name}.log`);
  const fd = openSync(logPath, 'a');
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  child.logPath = logPath;
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

export function run(cmd, args, opts = {}) {
  return new Promise((ok, fail) => {
    execFile(cmd, args, { timeout: 15000, ...opts }, (err, stdout, stderr) => {
      if (err) { err.stdout = stdout; err.stderr = stderr; fail(err); } else ok(stdout);
    });
  });
}

/** Polls `check` until truthy; an error with `fatal: true` ends the wait at once. */
export async function waitUntil(check, { timeout = 10000, interval = 100, what = 'condition' } = {}) {
  const until = Date.now() + timeout;
  let last;
  while (Date.now() < until) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) { if (e.fatal) throw e; last = e; }
    await sleep(interval);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

export class Redis {
  /**
   * `appendfsync`: unset (default) runs without persistence, as before (a kill -9 loses every
   * key); 'always' or 'everysec' turns the append-only file on, in a directory of its own under
   * RUN_DIR (created fresh here, kept across restart()), so a kill -9 + start() keeps the data.
   */
  constructor(port, { appendfsync } = {}) {
    this.port = port; this.url = `redis://127.0.0.1:${port}/0`;
    this.appendfsync = appendfsync;
    if (appendfsync) {
      this.dir = join(RUN_DIR, 'data', `redis-${port}`);
      rmSync(this.dir, { recursive: true, force: true });
      mkdirSync(this.dir, { recursive: true });
    }
  }

  static async start(port, opts = {}) {
    const r = new Redis(port ?? await freePort(), opts);
    await r.start();
    return r;
  }

  async start() {
    const persist = this.appendfsync
      ? ['--dir', this.dir, '--appendonly', 'yes', '--appendfsync', this.appendfsync]
      : ['--appendonly', 'no'];
    this.proc = spawnLogged(`redis-${this.port}`, 'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', ...persist]);
    const proc = this.proc;
    await waitUntil(async () => {
      if (hasExited(proc)) throw Object.assign(new Error(`redis-server on ${this.port} exited (log ${proc.logPath})`), { fatal: true });
      return (await this.cli('PING')).trim() === 'PONG';
    }, { what: `redis on ${this.port}` });
  }

  /** kill -9, then start again on the same port after `downMs`. */
  async restart(downMs = 0) {
    await this.kill9();
    if (downMs > 0) await sleep(downMs);
    await this.start();
  }

  cli(...args) { return run('redis-cli', ['-p', String(this.port), ...args]); }

  /** kill -9, as an outage would. */
  async kill9() { await stopProcess(this.proc, 'SIGKILL'); }

  async stop() { await this.kill9(); }
}

export class Herald {
  /**
   * Each instance gets its own data directory (`storage.data_dir`: the outbox with Redis), a
   * fresh one per Herald object under RUN_DIR/data, kept when the same object is start()ed again
   * after kill9(). `dataDir`: another path, or false to set none (the server's default).
   */
  constructor({ name, port, redisUrl, env = {}, dataDir }) {
    Object.assign(this, { name, port, redisUrl, extraEnv: env });
    this.url = `http://127.0.0.1:${port}`;
    this.dataDir = dataDir === undefined ? join(RUN_DIR, 'data', `herald-${name}-${port}`) : dataDir;
    if (this.dataDir && dataDir === undefined) rmSync(this.dataDir, { recursive: true, force: true });
    if (this.dataDir) mkdirSync(this.dataDir, { recursive: true });
  }

  async start() {
    this.proc = spawnLogged(`herald-${this.name}-${this.port}`, HERALD_BIN, [], {
      RUST_LOG: process.env.HERALD_LOG || 'info',
      HERALD__SERVER__HOST: '127.0.0.1',
      HERALD__SERVER__PORT: String(this.port),
      HERALD__SERVER__NODE_ID: this.name,
      HERALD__REDIS__URL: this.redisUrl,
      HERALD__AUTH__JWT_SECRET: JWT_SECRET,
      HERALD__API__KEYS: API_KEY,
      HERALD__SOCKETIO__NAMESPACES: '/,/chat',
      ...(this.dataDir ? { HERALD__STORAGE__DATA_DIR: this.dataDir } : {}),
      ...this.extraEnv,
    });
    const proc = this.proc;
    await waitUntil(async () => {
      if (hasExited(proc)) throw Object.assign(new Error(`herald ${this.name} exited: ${this.logTail()}`), { fatal: true });
      const res = await fetch(`${this.url}/ready`);
      return res.status === 200;
    }, { timeout: 20000, what: `herald ${this.name} ready` });
    return this;
  }

  logTail(n = 2000) {
    try { return readFileSync(this.proc.logPath, 'utf8').slice(-n); } catch { return ''; }
  }

  async kill9() { await stopProcess(this.proc, 'SIGKILL'); }

  async stop() { await stopProcess(this.proc, 'SIGTERM', 5000); }

  async health() { return (await fetch(`${this.url}/health`)).json(); }

  async api(method, path, body) {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = text; }
    return { status: res.status, body: json };
  }

  /** POST /api/v1/notify; resolves with the stored id. */
  async notify(payload) {
    const r = await this.api('POST', '/api/v1/notify', payload);
    if (r.status !== 202) throw new Error(`notify on ${this.name}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.id;
  }
}

/** One redis-server plus `n` Herald instances named A, B, C... sharing it (`redis`: Redis options). */
export async function startCluster(n = 3, { env = {}, redis: redisOpts = {} } = {}) {
  const redis = await Redis.start(undefined, redisOpts);
  const nodes = [];
  try {
    for (let i = 0; i < n; i++) {
      const name = String.fromCharCode(65 + i);
      nodes.push(new Herald({ name, port: await freePort(), redisUrl: redis.url, env }));
    }
    await Promise.all(nodes.map((h) => h.start()));
  } catch (e) {
    await Promise.all(nodes.map((h) => h.kill9()));
    await redis.stop();
    throw e;
  }
  return {
    redis,
    nodes,
    async stop() {
      await Promise.all(nodes.map((h) => h.stop()));
      await redis.stop();
    },
  };
}

export function token(userId, extra = {}) {
  return jwt.sign({ user_id: userId, exp: Math.floor(Date.now() / 1000) + 3600, ...extra }, JWT_SECRET, { algorithm: 'HS256' });
}

let uniq = 0;
/** A user id no other test uses. */
export function uid(prefix = 'u') { return `${prefix}${process.pid}x${++uniq}`; }
