// The chaos run (SPEC §7 under failure): 3 Herald instances behind nginx, one redis-server, many
// real socket.io-client clients (half resume with auth.last_id, half unchanged: token in the
// query string) with socket.io-client's own reconnection, and a producer posting
// POST /api/v1/notify at a steady rate (each with its own Idempotency-Key, retried with the
// same key on 503 and on network errors). Meanwhile: kill -9 of the instance holding the most
// sockets and its restart, then kill -9 of redis-server and its restart, once per cycle.
// Afterwards every accepted notification is checked against every intended recipient's receipts.
//
//   import { chaosParams, runChaos } from './chaos.js';
//   const result = await runChaos(chaosParams());   // CHAOS_* environment variables, see below
//   result.failures: [] when every check holds; result.summary: the figures (also in RUN_DIR)
//
// Checks (for every notification answered 2xx, `{"id"}` = stored or `{"queued":true}`):
//   - intended recipients: the user's client ({"to":{"user"}}), every client holding the role
//     ({"to":{"role"}}), every client ({"broadcast":true}); receipts are matched by data.seq
//   - lost: an intended recipient never received it (must be 0)
//   - last_id clients: each at most once (duplicates must be 0), first receipts in strictly
//     increasing id order (ms, then seq, numerically), every one with an id
//   - unchanged clients: at least once; a duplicate is allowed only when the client's connection
//     broke between the first receipt and the duplicate, and the first receipt was at most
//     CHAOS_KILL_DUP_WINDOW_MS (3 s) before that break when the break was an instance kill, or
//     at most the heartbeat window (ping interval + ping timeout) before it otherwise
//   - misdelivered: a client received a notification not meant for it (must be 0)
//   - rejected: a 4xx answer to a valid request (must be 0)
// Reported only: refused (503 after all retries), failed (network errors after all retries),
// id mismatches between recipients, 503s without Retry-After, offline_summary notifications.
import http from 'node:http';
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import { startCluster, token, RUN_DIR, API_KEY, hasExited } from './cluster.js';
import { Nginx } from './nginx.js';

const num = (v, d) => (v === undefined || v === '' ? d : Number(v));

/** Parameters from CHAOS_* environment variables; the defaults are the CI variant. */
export function chaosParams(env = process.env) {
  const seconds = num(env.CHAOS_SECONDS, 60);
  const mix = String(env.CHAOS_MIX || '80,15,5').split(',').map(Number);
  const persist = env.CHAOS_REDIS_PERSIST ?? 'always';
  const p = {
    seconds,                                            // production time
    clients: num(env.CHAOS_CLIENTS, 200),
    polling: num(env.CHAOS_POLLING, 10),                // of which on HTTP long-polling only
    rate: num(env.CHAOS_RATE, 20),                      // notifications per second
    mix: { user: mix[0] ?? 80, role: mix[1] ?? 15, broadcast: mix[2] ?? 5 },
    roles: num(env.CHAOS_ROLES, 4),
    viaNginx: num(env.CHAOS_VIA_NGINX, 0.4),            // share of POSTs through nginx (the rest: a random instance)
    cycleSeconds: num(env.CHAOS_CYCLE_SECONDS, 60),     // the chaos below repeats every cycle
    killInstanceAt: num(env.CHAOS_KILL_INSTANCE_AT, 15),
    instanceDownSeconds: num(env.CHAOS_INSTANCE_DOWN_SECONDS, 5),
    killRedisAt: num(env.CHAOS_KILL_REDIS_AT, 35),
    redisDownSeconds: num(env.CHAOS_REDIS_DOWN_SECONDS, 6),
    redisAppendfsync: persist === 'no' || persist === '' ? undefined : persist,
    reconnectionDelay: num(env.CHAOS_RECONNECTION_DELAY_MS, 500),
    reconnectionDelayMax: num(env.CHAOS_RECONNECTION_DELAY_MAX_MS, 1000),
    pingIntervalSecs: num(env.CHAOS_PING_INTERVAL_SECS, undefined), // unset: Herald's default (15)
    pingTimeoutSecs: num(env.CHAOS_PING_TIMEOUT_SECS, undefined),   // unset: Herald's default (30)
    killDupWindowMs: num(env.CHAOS_KILL_DUP_WINDOW_MS, 3000),
    allowIdTies: env.CHAOS_ALLOW_ID_TIES === '1',        // equal ids of different notifications: reported only
    attemptTimeoutMs: num(env.CHAOS_ATTEMPT_TIMEOUT_MS, 5000),
    maxAttempts: num(env.CHAOS_MAX_ATTEMPTS, 10),
    retryDeadlineMs: num(env.CHAOS_RETRY_DEADLINE_MS, 20000), // no new attempt this long after the first
    retryCapMs: num(env.CHAOS_RETRY_CAP_MS, 2000),
    connectTimeoutMs: num(env.CHAOS_CONNECT_TIMEOUT_MS, 30000),
    settleQuietMs: num(env.CHAOS_SETTLE_QUIET_MS, 3000),
    settleMaxMs: num(env.CHAOS_SETTLE_MAX_MS, 20000),
    budgetSeconds: num(env.CHAOS_BUDGET_SECONDS, seconds + 40), // whole run incl. startup; post-production waits shrink to fit
    seed: num(env.CHAOS_SEED, Date.now() % 1_000_000_007),
    heraldLog: env.HERALD_LOG || 'info',
    report: num(env.CHAOS_REPORT, 5),                   // detailed entries printed per problem kind
  };
  p.heartbeatMs = ((p.pingIntervalSecs ?? 15) + (p.pingTimeoutSecs ?? 30)) * 1000;
  return p;
}

/** The chaos actions, ms after the producer starts: one kill/restart of an instance and of Redis per cycle. */
export function chaosSchedule(p) {
  const events = [];
  for (let c = 0; ; c += p.cycleSeconds) {
    const instanceEnd = c + p.killInstanceAt + p.instanceDownSeconds;
    const redisEnd = c + p.killRedisAt + p.redisDownSeconds;
    const end = Math.max(instanceEnd, redisEnd);
    if (end + 5 > p.seconds || p.cycleSeconds <= 0) {
      // a last, shorter cycle may still fit the instance kill
      if (instanceEnd + 5 <= p.seconds && p.cycleSeconds > 0) events.push({ at: (c + p.killInstanceAt) * 1000, action: 'instance', downMs: p.instanceDownSeconds * 1000 });
      break;
    }
    events.push({ at: (c + p.killInstanceAt) * 1000, action: 'instance', downMs: p.instanceDownSeconds * 1000 });
    events.push({ at: (c + p.killRedisAt) * 1000, action: 'redis', downMs: p.redisDownSeconds * 1000 });
  }
  return events.sort((a, b) => a.at - b.at);
}

/** Stream ids "<ms>-<seq>", compared as numbers. */
export function parseId(id) {
  const m = typeof id === 'string' && /^(\d+)-(\d+)$/.exec(id);
  return m ? [Number(m[1]), Number(m[2])] : null;
}
export function cmpId(a, b) {
  const x = parseId(a); const y = parseId(b);
  return x[0] - y[0] || x[1] - y[1];
}

function rng(seed) { // mulberry32
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const clientAddress = (i) => `127.0.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
const producerAddress = (i) => `127.0.251.${1 + i}`;

// ---------------------------------------------------------------------------------------------
// clients

class ChaosClient {
  constructor(idx, { url, runId, p, expSecs }) {
    this.idx = idx;
    this.kind = idx % 2 === 0 ? 'last_id' : 'unchanged';
    this.transport = idx < p.polling ? 'polling' : 'websocket';
    this.user = `chaos-${idx}`;
    this.role = `r${Math.floor(idx / 2) % p.roles}`;
    this.localAddress = clientAddress(idx);
    this.label = `#${idx} ${this.kind}/${this.transport} user=${this.user} role=${this.role} from ${this.localAddress}`;
    this.runId = runId;
    this.receipts = [];          // {seq, id, at, channel}, our notifications only, arrival order
    this.counts = new Map();     // seq -> receipts
    this.lifecycle = [];         // connect / disconnect / connect_error / auth / welcome
    this.summaries = [];         // offline_summary notifications
    this.foreign = [];           // notifications that are neither ours nor welcome/offline_summary
    this.lastId = undefined;
    this.lastConnectAt = 0;
    this.lastWelcomeAt = 0;
    this.manualReconnects = 0;
    this.closed = false;

    const tok = token(this.user, { role: this.role, exp: Math.floor(Date.now() / 1000) + expSecs });
    const opts = {
      forceNew: true,
      reconnection: true,
      reconnectionDelay: p.reconnectionDelay,
      reconnectionDelayMax: p.reconnectionDelayMax,
      randomizationFactor: 0.5,
      timeout: 5000,
      transports: [this.transport],
    };
    // a source address of its own: nginx hashes $remote_addr, so the clients spread over the instances
    if (this.transport === 'polling') {
      this.agent = new http.Agent({ keepAlive: true, localAddress: this.localAddress });
      opts.agent = this.agent;
    } else {
      opts.localAddress = this.localAddress;
    }
    if (this.kind === 'last_id') {
      opts.auth = (cb) => {
        this.lifecycle.push({ what: 'auth', at: Date.now(), last_id: this.lastId ?? null });
        cb({ token: tok, last_id: this.lastId });
      };
    } else {
      opts.query = { token: tok };
    }
    const s = this.socket = io(url, opts);
    s.on('connect', () => { this.lastConnectAt = Date.now(); this.lifecycle.push({ what: 'connect', at: this.lastConnectAt }); });
    s.on('disconnect', (reason) => {
      this.lifecycle.push({ what: 'disconnect', at: Date.now(), reason });
      // the server closed it on purpose: socket.io-client does not come back by itself
      if (reason === 'io server disconnect' && !this.closed) this.reconnectLater();
    });
    s.on('connect_error', (err) => {
      this.lifecycle.push({ what: 'connect_error', at: Date.now(), message: err?.message });
      // refused by the server (middleware): socket.io-client does not retry by itself
      if (!s.active && !this.closed) this.reconnectLater();
    });
    s.on('notification', (n) => this.onNotification(n));
  }

  reconnectLater() {
    this.manualReconnects++;
    setTimeout(() => { if (!this.closed && !this.socket.connected) this.socket.connect(); }, 1000).unref();
  }

  onNotification(n) {
    const at = Date.now();
    if (!n || typeof n !== 'object') { this.foreign.push({ at, n }); return; }
    if (n.type === 'welcome') { this.lastWelcomeAt = at; this.lifecycle.push({ what: 'welcome', at, sid: n.data?.sid }); return; }
    if (n.type === 'offline_summary') { this.summaries.push({ at, data: n.data }); return; }
    const seq = n.data?.seq;
    if (n.data?.run !== this.runId || !Number.isInteger(seq)) { this.foreign.push({ at, n }); return; }
    const id = typeof n.id === 'string' ? n.id : null;
    if (parseId(id) && (this.lastId === undefined || cmpId(id, this.lastId) > 0)) this.lastId = id;
    this.receipts.push({ seq, id, at, channel: n.channel });
    this.counts.set(seq, (this.counts.get(seq) ?? 0) + 1);
  }

  /** Connected, and the welcome of this connection received. */
  get up() { return this.socket.connected && this.lastWelcomeAt >= this.lastConnectAt && this.lastConnectAt > 0; }

  close() {
    this.closed = true;
    try { this.socket.disconnect(); } catch { /* gone */ }
    try { this.agent?.destroy(); } catch { /* gone */ }
  }
}

// ---------------------------------------------------------------------------------------------
// producer

function postJson(port, path, payload, headers, { agent, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(payload));
    let done = false;
    const finish = (f, v) => { if (!done) { done = true; clearTimeout(timer); f(v); } };
    const req = http.request({
      host: '127.0.0.1', port, path, method: 'POST', agent,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', 'content-length': data.length, ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body; try { body = JSON.parse(text); } catch { body = text; }
        finish(resolve, { status: res.statusCode, headers: res.headers, body });
      });
      res.on('error', (e) => finish(reject, e));
    });
    const timer = setTimeout(() => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'TIMEOUT' })), timeoutMs);
    req.on('error', (e) => finish(reject, e));
    req.end(data);
  });
}

class Producer {
  constructor({ p, runId, targets, clients, roleMembers, random, signal, t0 }) {
    Object.assign(this, { p, runId, targets, clients, roleMembers, random, signal, t0 });
    this.sends = [];
    this.inflight = new Set();
    this.missingRetryAfter = 0;
  }

  pickTarget() {
    if (this.random() < this.p.viaNginx) return this.targets[0];
    const direct = this.targets.slice(1);
    return direct[Math.floor(this.random() * direct.length)];
  }

  makeSend(seq) {
    const { mix } = this.p;
    const r = this.random() * (mix.user + mix.role + mix.broadcast);
    let to; let target;
    if (r < mix.user) {
      const c = this.clients[Math.floor(this.random() * this.clients.length)];
      to = { user: c.user }; target = { kind: 'user', user: c.user, client: c.idx };
    } else if (r < mix.user + mix.role) {
      const roles = Object.keys(this.roleMembers);
      const role = roles[Math.floor(this.random() * roles.length)];
      to = { role }; target = { kind: 'role', role };
    } else {
      to = { broadcast: true }; target = { kind: 'broadcast' };
    }
    return {
      seq, key: `chaos-${this.runId}-${seq}`, target,
      payload: { to, type: 'chaos', message: `chaos #${seq}`, data: { run: this.runId, seq, kind: target.kind } },
      attempts: [], outcome: 'pending', id: null, firstAt: null, doneAt: null,
    };
  }

  start(seq) {
    const rec = this.makeSend(seq);
    this.sends.push(rec);
    const pr = this.deliver(rec).catch((e) => { rec.outcome = 'failed'; rec.error = String(e?.message ?? e); }).finally(() => this.inflight.delete(pr));
    this.inflight.add(pr);
  }

  async deliver(rec) {
    const { p } = this;
    rec.firstAt = Date.now();
    for (let attempt = 1; ; attempt++) {
      const via = this.pickTarget();
      const started = Date.now();
      let res; let err;
      try {
        res = await postJson(via.port, '/api/v1/notify', rec.payload, { 'idempotency-key': rec.key }, { agent: via.agent(), timeoutMs: p.attemptTimeoutMs });
      } catch (e) { err = e; }
      const a = { t: started - this.t0, via: via.name, ms: Date.now() - started };
      if (res) { a.status = res.status; if (res.headers['retry-after'] !== undefined) a.retryAfter = res.headers['retry-after']; if (res.status >= 300) a.body = res.body; } else a.err = err?.code || err?.message;
      rec.attempts.push(a);
      if (res && res.status >= 200 && res.status < 300) {
        rec.doneAt = Date.now(); rec.answer = res.body;
        if (res.body && typeof res.body.id === 'string') { rec.outcome = 'stored'; rec.id = res.body.id; } else if (res.body?.queued === true) rec.outcome = 'queued';
        else rec.outcome = 'accepted'; // 2xx with neither: counted as accepted, reported
        return;
      }
      if (res && res.status >= 400 && res.status < 500) { rec.outcome = 'rejected'; rec.doneAt = Date.now(); return; }
      if (res?.status === 503 && res.headers['retry-after'] === undefined) this.missingRetryAfter++;
      if (attempt >= p.maxAttempts || Date.now() - rec.firstAt >= p.retryDeadlineMs || this.signal?.aborted) {
        rec.outcome = res?.status === 503 ? 'refused' : 'failed';
        rec.doneAt = Date.now();
        return;
      }
      let delay;
      const ra = res?.status === 503 ? Number.parseFloat(res.headers['retry-after']) : NaN;
      if (Number.isFinite(ra)) delay = Math.min(p.retryCapMs, Math.max(100, ra * 1000));
      else delay = Math.min(p.retryCapMs, 200 * 2 ** (attempt - 1));
      delay = Math.round(delay * (0.75 + this.random() * 0.5));
      await sleep(delay);
    }
  }

  /** Posts p.rate per second for p.seconds (drift-free); returns when the last one was started. */
  async run() {
    const total = Math.floor(this.p.seconds * this.p.rate);
    const interval = 1000 / this.p.rate;
    for (let seq = 0; seq < total; seq++) {
      const wait = this.t0 + seq * interval - Date.now();
      if (wait > 0) await sleep(wait, undefined, { signal: this.signal });
      this.start(seq);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// analysis (pure: clients, sends, timeline in; figures and problems out)

function recipientsOf(send, clients, roleMembers) {
  const t = send.target;
  if (t.kind === 'user') return [t.client];
  if (t.kind === 'role') return roleMembers[t.role] ?? [];
  return clients.map((c) => c.idx);
}

const ACCEPTED = new Set(['stored', 'queued', 'accepted']);

export function analyze({ clients, sends, timeline, p, roleMembers }) {
  const bySeq = new Map(sends.map((s) => [s.seq, s]));
  const kills = timeline.filter((e) => e.what === 'kill-instance').map((e) => e.at);
  const problems = { lost: [], lastIdDup: [], unchangedDupOutside: [], order: [], idTies: [], noId: [], misdelivered: [], idMismatch: [], foreign: [] };
  const f = {
    clients: clients.length,
    lastIdClients: clients.filter((c) => c.kind === 'last_id').length,
    unchangedClients: clients.filter((c) => c.kind === 'unchanged').length,
    pollingClients: clients.filter((c) => c.transport === 'polling').length,
    sent: sends.length,
    attempts: sends.reduce((n, s) => n + s.attempts.length, 0),
    retried: sends.filter((s) => s.attempts.length > 1).length,
    stored: 0, queued: 0, acceptedNoId: 0, accepted: 0, refused: 0, failed: 0, rejected: 0, pending: 0,
    expected: 0, delivered: 0, deliveredExpected: 0, lost: 0, lostNotifications: 0,
    dupLastId: 0, dupUnchanged: 0, dupUnchangedOutsideWindow: 0,
    maxDupAgeKillMs: null, maxDupAgeHeartbeatMs: null, maxDupAgeLastIdMs: null,
    orderViolations: 0, idTies: 0, lastIdWithoutId: 0, misdelivered: 0, foreign: 0, idMismatch: 0,
    deliveredUnacknowledged: 0, deliveredThoughRefused: 0, offlineSummaries: 0,
    disconnects: 0, connectErrors: 0, manualReconnects: 0, notUpAtEnd: 0,
  };
  for (const s of sends) {
    if (s.outcome === 'stored') f.stored++; else if (s.outcome === 'queued') f.queued++; else if (s.outcome === 'accepted') f.acceptedNoId++;
    else if (s.outcome === 'refused') f.refused++; else if (s.outcome === 'rejected') f.rejected++; else if (s.outcome === 'failed') f.failed++; else f.pending++;
  }
  f.accepted = f.stored + f.queued + f.acceptedNoId;
  // queued answers given while Redis was up (outside [kill-redis, every instance up again + 2 s])
  const outages = [];
  for (const e of timeline) {
    if (e.what === 'kill-redis') outages.push([e.at, Infinity]);
    if (e.what === 'redis-up-everywhere' && outages.length) outages[outages.length - 1][1] = e.at + 2000;
  }
  f.queuedOutsideOutage = sends.filter((s) => s.outcome === 'queued' && !outages.some(([a, b]) => s.doneAt >= a && s.doneAt <= b)).length;

  // the ids each notification was delivered with (one id per call, shared by every recipient)
  const idsBySeq = new Map();
  for (const c of clients) {
    for (const r of c.receipts) {
      if (!r.id) continue;
      let set = idsBySeq.get(r.seq); if (!set) idsBySeq.set(r.seq, set = new Set());
      set.add(r.id);
    }
  }
  for (const s of sends) if (s.id) { let set = idsBySeq.get(s.seq); if (!set) idsBySeq.set(s.seq, set = new Set()); set.add(s.id); }
  for (const [seq, set] of idsBySeq) if (set.size > 1) { f.idMismatch++; problems.idMismatch.push({ seq, ids: [...set] }); }

  // lost: accepted × intended recipient without a receipt
  const lostSeqs = new Set();
  for (const s of sends) {
    if (!ACCEPTED.has(s.outcome)) continue;
    for (const idx of recipientsOf(s, clients, roleMembers)) {
      f.expected++;
      if (clients[idx].counts.get(s.seq)) f.deliveredExpected++;
      else { f.lost++; lostSeqs.add(s.seq); problems.lost.push({ seq: s.seq, client: idx }); }
    }
  }
  f.lostNotifications = lostSeqs.size;

  const maxOf = (a, b) => (a === null ? b : Math.max(a, b));
  for (const c of clients) {
    f.delivered += c.receipts.length;
    f.offlineSummaries += c.summaries.length;
    f.foreign += c.foreign.length;
    for (const x of c.foreign.slice(0, 3)) problems.foreign.push({ client: c.idx, at: x.at, n: x.n });
    f.disconnects += c.lifecycle.filter((l) => l.what === 'disconnect').length;
    f.connectErrors += c.lifecycle.filter((l) => l.what === 'connect_error').length;
    f.manualReconnects += c.manualReconnects;
    if (!c.upAtEnd) f.notUpAtEnd++;
    const disconnects = c.lifecycle.filter((l) => l.what === 'disconnect');
    const receiptsBySeq = new Map();
    for (const r of c.receipts) { let l = receiptsBySeq.get(r.seq); if (!l) receiptsBySeq.set(r.seq, l = []); l.push(r); }

    for (const [seq, rs] of receiptsBySeq) {
      const s = bySeq.get(seq);
      if (!s) { f.foreign++; problems.foreign.push({ client: c.idx, seq, note: 'seq never sent' }); continue; }
      if (!recipientsOf(s, clients, roleMembers).includes(c.idx)) { f.misdelivered++; problems.misdelivered.push({ seq, client: c.idx }); continue; }
      if (!ACCEPTED.has(s.outcome)) {
        f.deliveredUnacknowledged++;
        if (s.outcome === 'refused' && s.attempts.every((a) => a.status === 503)) f.deliveredThoughRefused++;
      }
      if (rs.length < 2) continue;
      const first = rs[0];
      for (const r of rs.slice(1)) {
        const brk = disconnects.filter((d) => d.at >= first.at && d.at <= r.at).pop();
        const cause = !brk ? null : kills.some((k) => brk.at >= k - 250 && brk.at <= k + 3000) ? 'instance-kill' : 'lost-connection';
        const age = brk ? brk.at - first.at : null;
        const entry = { seq, client: c.idx, firstAt: first.at, dupAt: r.at, breakAt: brk?.at ?? null, breakReason: brk?.reason ?? null, cause, ageMs: age };
        if (c.kind === 'last_id') {
          f.dupLastId++;
          if (age !== null) f.maxDupAgeLastIdMs = maxOf(f.maxDupAgeLastIdMs, age);
          problems.lastIdDup.push(entry);
          continue;
        }
        f.dupUnchanged++;
        if (cause === 'instance-kill') f.maxDupAgeKillMs = maxOf(f.maxDupAgeKillMs, age);
        if (cause === 'lost-connection') f.maxDupAgeHeartbeatMs = maxOf(f.maxDupAgeHeartbeatMs, age);
        const window = cause === 'instance-kill' ? p.killDupWindowMs : p.heartbeatMs;
        if (!brk || age > window) {
          f.dupUnchangedOutsideWindow++;
          problems.unchangedDupOutside.push({ ...entry, windowMs: brk ? window : 0, why: brk ? `first receipt ${age} ms before the break (window ${window} ms)` : 'no disconnect between the first receipt and the duplicate' });
        }
      }
    }

    if (c.kind === 'last_id') {
      // first receipts in arrival order: ids strictly increasing. An id lower than one received
      // before is out of order; an id equal to that of another notification received before (two
      // streams handing out the same "<ms>-<seq>") is a tie: resuming after it skips the other.
      const seen = new Set();
      let prev = null;
      for (const r of c.receipts) {
        if (seen.has(r.seq)) continue;
        seen.add(r.seq);
        if (!parseId(r.id)) { f.lastIdWithoutId++; problems.noId.push({ seq: r.seq, client: c.idx, at: r.at, id: r.id }); continue; }
        const d = prev ? cmpId(r.id, prev.id) : 1;
        const entry = () => ({ client: c.idx, seq: r.seq, id: r.id, at: r.at, afterSeq: prev.seq, afterId: prev.id, afterAt: prev.at });
        if (d < 0) { f.orderViolations++; problems.order.push(entry()); }
        if (d === 0) { f.idTies++; problems.idTies.push(entry()); }
        if (d > 0) prev = r;
      }
    }
  }

  const failures = [];
  if (f.lost) failures.push(`lost: ${f.lost} receipts missing (${f.lostNotifications} notifications)`);
  if (f.dupLastId) failures.push(`last_id clients got ${f.dupLastId} duplicates`);
  if (f.orderViolations) failures.push(`last_id clients: ${f.orderViolations} notifications out of id order (an id lower than one received before)`);
  if (f.idTies && !p.allowIdTies) failures.push(`last_id clients: ${f.idTies} notifications with the same id as a different notification received before (ids not increasing; CHAOS_ALLOW_ID_TIES=1 reports them only)`);
  if (f.lastIdWithoutId) failures.push(`last_id clients: ${f.lastIdWithoutId} notifications without a stream id`);
  if (f.dupUnchangedOutsideWindow) failures.push(`unchanged clients: ${f.dupUnchangedOutsideWindow} duplicates outside the allowed window`);
  if (f.misdelivered) failures.push(`misdelivered: ${f.misdelivered} receipts by clients the notification was not meant for`);
  if (f.rejected) failures.push(`rejected: ${f.rejected} valid notify requests answered 4xx`);
  if (f.accepted === 0) failures.push('no notification was accepted');
  return { figures: f, problems, failures };
}

// ---------------------------------------------------------------------------------------------
// reporting

function rel(at, t0) { return at == null ? '-' : `${((at - t0) / 1000).toFixed(3)}s`; }

/** The client and its connection history (only the part within 15 s of `near` when that is long). */
function describeClient(c, t0, near) {
  let list = c.lifecycle;
  if (near != null && list.length > 16) list = list.filter((l) => Math.abs(l.at - near) <= 15000);
  const life = list.map((l) => {
    const extra = l.reason ? `(${l.reason})` : l.message ? `(${l.message})` : l.what === 'auth' ? `(last_id=${l.last_id})` : l.sid ? `(sid ${l.sid})` : '';
    return `${l.what}${extra}@${rel(l.at, t0)}`;
  });
  return `${c.label}: ${list.length < c.lifecycle.length ? `[${c.lifecycle.length - list.length} events further away left out] ` : ''}${life.join(' ')}`;
}

function describeSend(s, t0) {
  const tgt = s.target.kind === 'user' ? `user ${s.target.user}` : s.target.kind === 'role' ? `role ${s.target.role}` : 'broadcast';
  const att = s.attempts.map((a) => `${a.via}@${(a.t / 1000).toFixed(3)}s→${a.status ?? a.err}${a.retryAfter !== undefined ? ` (Retry-After ${a.retryAfter})` : ''}`).join(', ');
  return `seq ${s.seq} → ${tgt}: ${s.outcome}${s.id ? ` id ${s.id}` : ''}${s.answer && !s.id ? ` ${JSON.stringify(s.answer)}` : ''}; attempts ${att}`;
}

function receiptsNear(c, at, t0, spanMs = 3000) {
  return c.receipts.filter((r) => Math.abs(r.at - at) <= spanMs).slice(0, 12)
    .map((r) => `${r.seq}:${r.id}@${rel(r.at, t0)}`).join(' ');
}

export function renderProblems({ problems, clients, sends, t0, deliveredIds, n = 5 }) {
  const bySeq = new Map(sends.map((s) => [s.seq, s]));
  const out = [];
  const section = (title, list, fmt) => {
    if (!list.length) return;
    out.push(`-- ${title}: ${list.length}${list.length > n ? ` (first ${n})` : ''}`);
    for (const e of list.slice(0, n)) out.push(fmt(e));
  };
  const sendLine = (seq) => { const s = bySeq.get(seq); return s ? describeSend(s, t0) : `seq ${seq}: never sent`; };
  section('lost', problems.lost, (e) => {
    const c = clients[e.client]; const s = bySeq.get(e.seq);
    const ids = deliveredIds.get(e.seq);
    return `  ${sendLine(e.seq)}; delivered to others with id ${ids ? [...ids].join('/') : '(nobody got it)'}\n    client ${describeClient(c, t0, s.firstAt)}\n    its receipts near the send: ${receiptsNear(c, s.firstAt, t0)}`;
  });
  const brk = (e) => (e.breakAt === null ? 'no disconnect between the two receipts' : `connection broke @${rel(e.breakAt, t0)} (${e.breakReason}, ${e.cause}), first receipt ${e.ageMs} ms before it`);
  section('last_id duplicates', problems.lastIdDup, (e) => `  ${sendLine(e.seq)}\n    first @${rel(e.firstAt, t0)}, again @${rel(e.dupAt, t0)}; ${brk(e)}\n    client ${describeClient(clients[e.client], t0, e.dupAt)}`);
  section('unchanged duplicates outside the window', problems.unchangedDupOutside, (e) => `  ${sendLine(e.seq)}\n    first @${rel(e.firstAt, t0)}, again @${rel(e.dupAt, t0)}; ${e.why}\n    client ${describeClient(clients[e.client], t0, e.dupAt)}`);
  const orderLine = (e) => `  client ${clients[e.client].label}: seq ${e.seq} id ${e.id} @${rel(e.at, t0)} after seq ${e.afterSeq} id ${e.afterId} @${rel(e.afterAt, t0)}\n    ${sendLine(e.seq)}\n    ${sendLine(e.afterSeq)}`;
  section('out of order (last_id)', problems.order, orderLine);
  section('id ties (last_id)', problems.idTies, orderLine);
  section('without id (last_id)', problems.noId, (e) => `  client ${clients[e.client].label}: seq ${e.seq} id ${JSON.stringify(e.id)} @${rel(e.at, t0)}; ${sendLine(e.seq)}`);
  section('misdelivered', problems.misdelivered, (e) => `  client ${clients[e.client].label} got ${sendLine(e.seq)}`);
  section('id mismatch (reported only)', problems.idMismatch, (e) => `  seq ${e.seq} delivered/answered with ids ${e.ids.join(', ')}`);
  section('foreign notifications (reported only)', problems.foreign, (e) => `  client #${e.client}: ${e.note ?? JSON.stringify(e.n).slice(0, 200)}`);
  return out.join('\n');
}

function logDigest(path, tail = 2500) {
  let text = '';
  try { text = readFileSync(path, 'utf8').replace(/\x1b\[[0-9;]*m/g, ''); } catch { return '(no log)'; }
  const bad = text.split('\n').filter((l) => /\b(WARN|ERROR)\b|panicked/.test(l));
  const distinct = [...new Map(bad.map((l) => [l.replace(/^\S+\s+/, '').replace(/\d+/g, '#').slice(0, 160), l])).values()].slice(-20);
  return `${bad.length} WARN/ERROR lines, distinct (last 20):\n${distinct.join('\n')}\n-- tail:\n${text.slice(-tail)}`;
}

function table(rows) {
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n');
}

// ---------------------------------------------------------------------------------------------
// the run

/**
 * Runs the whole chaos scenario and stops every process it started. Resolves
 * {failures, summary, report, summaryPath} (the report, printed through `log` already: the
 * failures, the first few problems of each kind with per-client details, herald log digests);
 * rejects only when the set-up itself fails (cluster, clients) or `signal` aborts.
 */
export async function runChaos(p = chaosParams(), { signal, log = console.log } = {}) {
  const startedAt = Date.now();
  const deadline = startedAt + p.budgetSeconds * 1000;
  const remaining = (reserve = 8000) => Math.max(0, deadline - reserve - Date.now());
  const runId = `${startedAt.toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
  const random = rng(p.seed);
  const schedule = chaosSchedule(p);
  log(`chaos: run ${runId}, seed ${p.seed}: ${p.clients} clients (${p.polling} on polling), ${p.rate}/s for ${p.seconds}s, `
    + `schedule ${schedule.map((e) => `${e.action}@${e.at / 1000}s(${e.downMs / 1000}s down)`).join(' ') || 'none'}, `
    + `redis ${p.redisAppendfsync ? `appendfsync ${p.redisAppendfsync}` : 'without persistence'}, budget ${p.budgetSeconds}s`);
  if (p.clients * 2 + 100 > 1024) log(`chaos: warning: ${p.clients} clients through nginx need more than its 1024 worker_connections`);

  const env = { HERALD__LIMITS__CONNECTS_PER_IP_PER_MINUTE: '0' };
  if (p.pingIntervalSecs !== undefined) env.HERALD__SOCKETIO__PING_INTERVAL_SECS = String(p.pingIntervalSecs);
  if (p.pingTimeoutSecs !== undefined) env.HERALD__SOCKETIO__PING_TIMEOUT_SECS = String(p.pingTimeoutSecs);
  const prevLog = process.env.HERALD_LOG;
  process.env.HERALD_LOG = p.heraldLog; // lib/cluster.js reads RUST_LOG from it

  let cluster; let nginx; const clients = []; const agents = [];
  const timeline = [];
  let t0 = Date.now();
  const mark = (what, extra = {}, at = Date.now()) => { const e = { what, at, ...extra }; timeline.push(e); log(`chaos: ${rel(e.at, t0)} ${what}${Object.keys(extra).length ? ` ${JSON.stringify(extra)}` : ''}`); return e; };
  const errors = [];
  try {
    cluster = await startCluster(3, { env, redis: { appendfsync: p.redisAppendfsync } });
    nginx = await Nginx.start(cluster.nodes.map((n) => n.port));
    const healthOf = async () => Object.fromEntries(await Promise.all(cluster.nodes.map(async (n) => {
      if (hasExited(n.proc)) return [n.name, null];
      try { const h = await n.health(); return [n.name, { connections: h.connections, redis: h.redis }]; } catch (e) { return [n.name, { error: e.message }]; }
    })));
    log(`chaos: cluster up in ${Date.now() - startedAt} ms (${cluster.nodes.map((n) => `${n.name}:${n.port}`).join(' ')}, nginx :${nginx.port}, redis :${cluster.redis.port})`);

    // clients
    const expSecs = p.budgetSeconds + 3600;
    const roleMembers = {};
    for (let i = 0; i < p.clients; i++) {
      const c = new ChaosClient(i, { url: nginx.url, runId, p, expSecs });
      clients.push(c);
      (roleMembers[c.role] ??= []).push(i);
      if (i % 25 === 24) await sleep(100, undefined, { signal });
    }
    const connStart = Date.now();
    while (!clients.every((c) => c.up)) {
      if (Date.now() - connStart > p.connectTimeoutMs) {
        const down = clients.filter((c) => !c.up);
        throw new Error(`chaos: ${down.length} of ${clients.length} clients not connected after ${p.connectTimeoutMs} ms; e.g. ${down.slice(0, 3).map((c) => describeClient(c, connStart)).join(' | ')}`);
      }
      await sleep(100, undefined, { signal });
    }
    const spread = await healthOf();
    log(`chaos: ${clients.length} clients connected in ${Date.now() - connStart} ms; per instance ${JSON.stringify(spread)}`);

    // producer targets: nginx (from several source addresses, so nginx spreads them too) and each instance
    const mkAgent = (localAddress) => { const a = new http.Agent({ keepAlive: true, maxSockets: 64, localAddress }); agents.push(a); return a; };
    const nginxAgents = Array.from({ length: 8 }, (_, i) => mkAgent(producerAddress(i)));
    const targets = [
      { name: 'nginx', port: nginx.port, agent: () => nginxAgents[Math.floor(random() * nginxAgents.length)] },
      ...cluster.nodes.map((n) => { const a = mkAgent('127.0.0.1'); return { name: n.name, port: n.port, agent: () => a }; }),
    ];

    t0 = Date.now();
    mark('producer-start', { health: spread });
    const producer = new Producer({ p, runId, targets, clients, roleMembers, random, signal, t0 });

    const chaosTasks = schedule.map(async (ev) => {
      await sleep(Math.max(0, t0 + ev.at - Date.now()), undefined, { signal });
      try {
        if (ev.action === 'instance') {
          const h = await healthOf();
          const alive = cluster.nodes.filter((n) => !hasExited(n.proc));
          const victim = alive.reduce((best, n) => ((h[n.name]?.connections ?? -1) > (h[best.name]?.connections ?? -1) ? n : best), alive[0]);
          const killAt = Date.now();
          await victim.kill9();
          mark('kill-instance', { node: victim.name, health: h }, killAt);
          await sleep(ev.downMs, undefined, { signal });
          const t = Date.now();
          await victim.start();
          mark('restart-instance', { node: victim.name, readyAfterMs: Date.now() - t });
        } else {
          const killAt = Date.now();
          await cluster.redis.kill9();
          mark('kill-redis', {}, killAt);
          await sleep(ev.downMs, undefined, { signal });
          await cluster.redis.start();
          const up = Date.now();
          mark('restart-redis', { health: await healthOf() }, up);
          // informative: when every instance says redis "up" again (bounded)
          for (let i = 0; i < 100 && !signal?.aborted; i++) {
            const h = await healthOf();
            if (Object.values(h).every((x) => x?.redis === 'up')) { mark('redis-up-everywhere', { afterMs: Date.now() - up }); break; }
            await sleep(100);
          }
        }
      } catch (e) {
        if (signal?.aborted) throw e;
        errors.push(`chaos action ${ev.action}@${ev.at / 1000}s failed: ${e.message}`);
        mark('chaos-error', { action: ev.action, error: e.message });
      }
    });

    const chaosDone = Promise.allSettled(chaosTasks); // no unhandled rejection while the producer runs
    await producer.run();
    mark('producer-stop', { sent: producer.sends.length, inflight: producer.inflight.size });
    for (const r of await chaosDone) if (r.status === 'rejected') throw r.reason; // only an abort gets here

    // answers still outstanding (retries): bounded by the retry deadline and the budget
    const inflightUntil = Date.now() + Math.min(p.retryDeadlineMs + p.attemptTimeoutMs, remaining(25000));
    while (producer.inflight.size && Date.now() < inflightUntil) await sleep(100, undefined, { signal });
    if (producer.inflight.size) errors.push(`${producer.inflight.size} notify requests still unanswered when the wait ended`);

    // every client back (connected, welcome received), bounded
    const upUntil = Date.now() + Math.min(15000, remaining(20000));
    while (!clients.every((c) => c.up) && Date.now() < upUntil) await sleep(100, undefined, { signal });
    mark('clients-up', { up: clients.filter((c) => c.up).length, of: clients.length, health: await healthOf() });

    // settle: until the receipts stop changing (and nothing is missing), bounded
    const accepted = producer.sends.filter((s) => ACCEPTED.has(s.outcome));
    const missing = () => {
      let n = 0;
      for (const s of accepted) for (const idx of recipientsOf(s, clients, roleMembers)) if (!clients[idx].counts.get(s.seq)) n++;
      return n;
    };
    const total = () => clients.reduce((n, c) => n + c.receipts.length, 0);
    const settleStart = Date.now();
    const settleUntil = settleStart + Math.max(p.settleQuietMs, Math.min(p.settleMaxMs, remaining()));
    let last = -1; let lastChange = Date.now(); let miss = missing();
    for (;;) {
      const n = total();
      if (n !== last) { last = n; lastChange = Date.now(); miss = missing(); }
      const quiet = Date.now() - lastChange;
      if (quiet >= p.settleQuietMs && miss === 0) break;
      if (quiet >= 3 * p.settleQuietMs) break; // nothing arrives any more
      if (Date.now() >= settleUntil) break;
      await sleep(250, undefined, { signal });
    }
    mark('settled', { afterMs: Date.now() - settleStart, receipts: total(), missing: miss });
    for (const c of clients) c.upAtEnd = c.up;

    // checks
    const { figures, problems, failures } = analyze({ clients, sends: producer.sends, timeline, p, roleMembers });
    figures.missingRetryAfter = producer.missingRetryAfter;
    figures.runSeconds = Math.round((Date.now() - startedAt) / 100) / 10;
    failures.push(...errors);
    const kills = timeline.filter((e) => e.what === 'kill-instance').length;
    const redisKills = timeline.filter((e) => e.what === 'kill-redis').length;
    const ms = (v) => (v === null ? '-' : `${v} ms`);
    const line = `chaos: sent ${figures.sent}, accepted ${figures.accepted} (stored ${figures.stored}, queued ${figures.queued}${figures.acceptedNoId ? `, 2xx without id ${figures.acceptedNoId}` : ''}), `
      + `refused ${figures.refused}, failed ${figures.failed}, rejected ${figures.rejected}; delivered ${figures.delivered} receipts (${figures.deliveredExpected}/${figures.expected} expected), `
      + `lost ${figures.lost}, duplicated last_id ${figures.dupLastId} / unchanged ${figures.dupUnchanged} (${figures.dupUnchangedOutsideWindow} outside window), `
      + `max duplicate age ${ms(figures.maxDupAgeKillMs)} (kill) / ${ms(figures.maxDupAgeHeartbeatMs)} (lost connection), order violations ${figures.orderViolations} + ${figures.idTies} id ties, `
      + `${kills} instance kills, ${redisKills} redis kills, ${figures.runSeconds}s`;
    const rows = [
      ['clients', `${figures.clients} (${figures.lastIdClients} last_id, ${figures.unchangedClients} unchanged, ${figures.pollingClients} polling)`],
      ['sent', `${figures.sent} (${figures.attempts} HTTP attempts, ${figures.retried} retried)`],
      ['accepted (2xx)', `${figures.accepted}: stored ${figures.stored}, queued ${figures.queued} (${figures.queuedOutsideOutage} of them while Redis was up), 2xx without id/queued ${figures.acceptedNoId}`],
      ['refused (503 after retries)', figures.refused],
      ['failed (errors after retries)', `${figures.failed}${figures.pending ? `, still pending ${figures.pending}` : ''}`],
      ['rejected (4xx)', figures.rejected],
      ['503 without Retry-After', figures.missingRetryAfter],
      ['expected receipts', figures.expected],
      ['delivered (receipts)', `${figures.delivered} (of which of unacknowledged notifications ${figures.deliveredUnacknowledged}, of refused ${figures.deliveredThoughRefused})`],
      ['lost', `${figures.lost} receipts, ${figures.lostNotifications} notifications`],
      ['duplicated last_id', figures.dupLastId],
      ['duplicated unchanged', `${figures.dupUnchanged} (${figures.dupUnchangedOutsideWindow} outside the window)`],
      ['max duplicate age', `${ms(figures.maxDupAgeKillMs)} after an instance kill (window ${p.killDupWindowMs} ms), ${ms(figures.maxDupAgeHeartbeatMs)} after a lost connection (window ${p.heartbeatMs} ms)`],
      ['order (last_id)', `${figures.orderViolations} out of order, ${figures.idTies} id ties${p.allowIdTies ? ' (allowed)' : ''}, ${figures.lastIdWithoutId} without id`],
      ['misdelivered / foreign', `${figures.misdelivered} / ${figures.foreign}`],
      ['id mismatches', figures.idMismatch],
      ['offline_summary', figures.offlineSummaries],
      ['client disconnects', `${figures.disconnects} (connect errors ${figures.connectErrors}, manual reconnects ${figures.manualReconnects}, not up at the end ${figures.notUpAtEnd})`],
      ['timeline', timeline.filter((e) => e.what !== 'producer-start').map((e) => `${e.what}${e.node ? ` ${e.node}` : ''}@${rel(e.at, t0)}`).join(', ')],
    ];
    log(line);
    log(table(rows));

    const deliveredIds = new Map();
    for (const c of clients) for (const r of c.receipts) if (r.id) { let s = deliveredIds.get(r.seq); if (!s) deliveredIds.set(r.seq, s = new Set()); s.add(r.id); }
    let report = '';
    const detail = renderProblems({ problems, clients, sends: producer.sends, t0, deliveredIds, n: p.report });
    if (failures.length) {
      report = [`chaos FAILED:\n  ${failures.join('\n  ')}`, detail,
        ...cluster.nodes.map((n) => `-- herald ${n.name} (${n.proc?.logPath}): ${logDigest(n.proc?.logPath)}`),
        `-- nginx error log (tail):\n${nginx.errorLog().replace(/token=[\w.-]+/g, 'token=…').slice(-1500)}`].join('\n');
      log(report);
    } else if (detail) log(detail);

    const summary = { runId, params: p, schedule, figures, failures, line, detail, timeline: timeline.map((e) => ({ ...e, t: e.at - t0 })), t0 };
    mkdirSync(RUN_DIR, { recursive: true });
    writeFileSync(join(RUN_DIR, 'chaos-summary.json'), JSON.stringify({ ...summary, problems: Object.fromEntries(Object.entries(problems).map(([k, v]) => [k, v.slice(0, 50)])) }, null, 2));
    writeFileSync(join(RUN_DIR, 'chaos-sends.json'), JSON.stringify(producer.sends.map(({ payload, ...s }) => ({ ...s, firstT: s.firstAt - t0, doneT: s.doneAt && s.doneAt - t0 }))));
    writeFileSync(join(RUN_DIR, 'chaos-clients.json'), JSON.stringify(clients.map((c) => ({
      idx: c.idx, label: c.label, kind: c.kind, transport: c.transport, user: c.user, role: c.role,
      lifecycle: c.lifecycle.map((l) => ({ ...l, t: l.at - t0 })), receipts: c.receipts.map((r) => [r.seq, r.id, r.at - t0]), summaries: c.summaries,
    }))));
    log(`chaos: summary in ${join(RUN_DIR, 'chaos-summary.json')} (sends: chaos-sends.json, clients: chaos-clients.json)`);
    return { failures, summary, report: report || line, summaryPath: join(RUN_DIR, 'chaos-summary.json') };
  } finally {
    for (const c of clients) c.close();
    for (const a of agents) a.destroy();
    await nginx?.stop().catch(() => {});
    await cluster?.stop().catch(() => {});
    if (prevLog === undefined) delete process.env.HERALD_LOG; else process.env.HERALD_LOG = prevLog;
  }
}
