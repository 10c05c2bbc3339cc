// Redis as users deploy it, from real processes on free loopback ports: a TLS-only
// redis-server (openssl-made CA + server certificate, an ACL user), master + replica + 3
// sentinels (`redis-server <conf> --sentinel`: the redis-sentinel program; the package may not
// ship the alias), and a 3-master 3-replica Redis Cluster (redis-cli --cluster create). Every
// process goes through cluster.js's spawnLogged (logged under RUN_DIR, killed on exit) and each
// topology's stop() ends all of its own.
import { mkdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { RUN_DIR, HERE, freePort, spawnLogged, stopProcess, hasExited, run, waitUntil, Herald } from './cluster.js';
import { PyEmitter } from './python.js';

function freshDir(name) {
  const dir = join(RUN_DIR, 'data', name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

const cli = (port, ...args) => run('redis-cli', ['-p', String(port), ...args]).then((s) => s.trim());

function redisServer(name, args) {
  return spawnLogged(name, 'redis-server', args);
}

async function waitPing(proc, pingArgs, what) {
  await waitUntil(async () => {
    if (hasExited(proc)) throw Object.assign(new Error(`${what} exited (log ${proc.logPath})`), { fatal: true });
    return (await run('redis-cli', [...pingArgs, 'PING'])).trim() === 'PONG';
  }, { what });
}

// ---------------------------------------------------------------------------------------------
/** TLS only (`--port 0 --tls-port`), a private CA, ACL user `herald`/`s3cret`, default user off. */
export class TlsRedis {
  static USER = 'herald';
  static PASSWORD = 's3cret';

  static async start() {
    const t = new TlsRedis();
    try { return await t.init(); } catch (e) { await t.stop(); throw e; }
  }

  async init() {
    const t = this;
    t.port = await freePort();
    t.dir = freshDir(`redis-tls-${t.port}`);
    const ssl = (...args) => run('openssl', args, { cwd: t.dir, timeout: 30000 });
    // the CA that signs the server's certificate, and another one that did not (a bad CA file)
    await Promise.all([['ca', '/CN=herald-backends-ca'], ['other-ca', '/CN=some-other-ca']].map(([n, subj]) =>
      ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.crt`, '-days', '2', '-subj', subj)));
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
    writeFileSync(join(t.dir, 'ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    await ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'ext');
    writeFileSync(join(t.dir, 'users.acl'), `user default off\nuser ${TlsRedis.USER} on >${TlsRedis.PASSWORD} ~* &* +@all\n`);
    t.caFile = join(t.dir, 'ca.crt');
    t.otherCaFile = join(t.dir, 'other-ca.crt');
    const f = (n) => join(t.dir, n);
    t.proc = redisServer(`redis-tls-${t.port}`, ['--port', '0', '--tls-port', String(t.port), '--bind', '127.0.0.1',
      '--tls-cert-file', f('server.crt'), '--tls-key-file', f('server.key'), '--tls-ca-cert-file', f('ca.crt'),
      '--tls-auth-clients', 'no', '--aclfile', f('users.acl'), '--dir', t.dir, '--save', '', '--appendonly', 'no']);
    await waitPing(t.proc, t.cliArgs(), `TLS redis on ${t.port}`);
    return t;
  }

  cliArgs() {
    return ['-p', String(this.port), '--tls', '--cacert', this.caFile, '--user', TlsRedis.USER, '--pass', TlsRedis.PASSWORD, '--no-auth-warning'];
  }

  cli(...args) { return run('redis-cli', [...this.cliArgs(), ...args]).then((s) => s.trim()); }

  url(password = TlsRedis.PASSWORD) { return `rediss://${TlsRedis.USER}:${password}@127.0.0.1:${this.port}/0`; }

  processes() { return [this.proc]; }

  async stop() { if (this.proc) await stopProcess(this.proc, 'SIGKILL'); }
}

// ---------------------------------------------------------------------------------------------
/** A master, one replica and three sentinels (quorum 2, down-after 1 s) watching `mymaster`. */
export class SentinelRedis {
  static NAME = 'mymaster';

  static async start() {
    const s = new SentinelRedis();
    s.procs = new Map(); // port -> process (data nodes and sentinels)
    try { return await s.init(); } catch (e) { await s.stop(); throw e; }
  }

  async init() {
    const s = this;
    s.ports = { master: await freePort(), replica: await freePort() };
    s.dir = freshDir(`redis-sentinel-${s.ports.master}`);
    const base = (p) => ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', s.dir,
      '--dbfilename', `dump-${p}.rdb`];
    s.procs.set(s.ports.master, redisServer(`redis-master-${s.ports.master}`, base(s.ports.master)));
    s.procs.set(s.ports.replica, redisServer(`redis-replica-${s.ports.replica}`,
      [...base(s.ports.replica), '--replicaof', '127.0.0.1', String(s.ports.master)]));
    await waitPing(s.procs.get(s.ports.master), ['-p', String(s.ports.master)], 'sentinel master');
    await waitUntil(async () => (await cli(s.ports.replica, 'INFO', 'replication')).includes('master_link_status:up'),
      { what: 'the replica in sync', timeout: 15000 });
    s.sentinels = [await freePort(), await freePort(), await freePort()];
    for (const p of s.sentinels) {
      const conf = join(s.dir, `sentinel-${p}.conf`); // sentinels rewrite their file: one each
      writeFileSync(conf, [
        `port ${p}`, 'bind 127.0.0.1', `dir ${s.dir}`,
        `sentinel monitor ${SentinelRedis.NAME} 127.0.0.1 ${s.ports.master} 2`,
        `sentinel down-after-milliseconds ${SentinelRedis.NAME} 1000`,
        `sentinel failover-timeout ${SentinelRedis.NAME} 5000`,
        `sentinel parallel-syncs ${SentinelRedis.NAME} 1`, '',
      ].join('\n'));
      s.procs.set(p, spawnLogged(`redis-sentinel-${p}`, 'redis-server', [conf, '--sentinel']));
    }
    for (const p of s.sentinels) {
      await waitUntil(async () => (await cli(p, 'SENTINEL', 'get-master-addr-by-name', SentinelRedis.NAME)).includes(String(s.ports.master)),
        { what: `sentinel ${p} watching the master` });
    }
    // every sentinel knows the other two (else a failover can lack its quorum) and the replica
    await waitUntil(async () => {
      for (const p of s.sentinels) {
        const info = await cli(p, 'SENTINEL', 'master', SentinelRedis.NAME);
        const field = (k) => { const l = info.split('\n'); const i = l.indexOf(k); return i >= 0 ? Number(l[i + 1]) : 0; };
        if (field('num-other-sentinels') < 2 || field('num-slaves') < 1) return false;
      }
      return true;
    }, { what: 'the sentinels to discover each other and the replica', timeout: 20000 });
    return s;
  }

  /** Herald's URL: the three sentinels and the master's name. */
  get url() { return `redis+sentinel://${this.sentinels.map((p) => `127.0.0.1:${p}`).join(',')}/${SentinelRedis.NAME}`; }

  /** python-socketio's form: redis+sentinel://h:p,h:p/<db>/<service name>. */
  get pythonUrl() { return `redis+sentinel://${this.sentinels.map((p) => `127.0.0.1:${p}`).join(',')}/0/${SentinelRedis.NAME}`; }

  /** The master's port as the first sentinel that answers sees it. */
  async masterPort() {
    for (const p of this.sentinels) {
      if (hasExited(this.procs.get(p))) continue;
      try {
        const [, port] = (await cli(p, 'SENTINEL', 'get-master-addr-by-name', SentinelRedis.NAME)).split('\n');
        return Number(port);
      } catch { /* next */ }
    }
    throw new Error('no sentinel answered');
  }

  async kill9(port) { await stopProcess(this.procs.get(port), 'SIGKILL'); }

  processes() { return [...this.procs.values()]; }

  async stop() { await Promise.all(this.processes().map((p) => stopProcess(p, 'SIGKILL'))); }
}

// ---------------------------------------------------------------------------------------------
/** Six cluster-enabled redis-servers, each in its own directory, joined by `redis-cli --cluster create`. */
export class ClusterRedis {
  static async start({ nodeTimeoutMs = 1000 } = {}) {
    const c = new ClusterRedis();
    c.procs = new Map();
    try { return await c.init(nodeTimeoutMs); } catch (e) { await c.stop(); throw e; }
  }

  async init(nodeTimeoutMs) {
    const c = this;
    c.ports = [];
    for (let i = 0; i < 6; i++) c.ports.push(await freePort());
    for (const p of c.ports) {
      const dir = freshDir(`redis-cluster-${p}`);
      c.procs.set(p, redisServer(`redis-cluster-${p}`, ['--port', String(p), '--bind', '127.0.0.1', '--dir', dir,
        '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', String(nodeTimeoutMs),
        '--save', '', '--appendonly', 'no', '--repl-diskless-sync-delay', '0']));
    }
    await Promise.all(c.ports.map((p) => waitPing(c.procs.get(p), ['-p', String(p)], `cluster node ${p}`)));
    await run('redis-cli', ['--cluster', 'create', ...c.ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'],
      { timeout: 60000 });
    await waitUntil(async () => {
      for (const p of c.ports) {
        const info = await cli(p, 'CLUSTER', 'INFO');
        if (!info.includes('cluster_state:ok') || !info.includes('cluster_known_nodes:6') || !info.includes('cluster_slots_ok:16384')) return false;
      }
      const nodes = await c.nodes();
      return nodes.filter((n) => n.master).length === 3 && nodes.filter((n) => !n.master && n.masterId).length === 3;
    }, { what: 'the cluster to agree (state ok, 6 nodes, 3 replicas)', timeout: 30000 });
    // a replica that never finished its first sync does not take over from a dead master
    const replicas = (await c.nodes()).filter((n) => !n.master).map((n) => n.port);
    await waitUntil(async () => {
      for (const p of replicas) if (!(await cli(p, 'INFO', 'replication')).includes('master_link_status:up')) return false;
      return true;
    }, { what: 'every replica in sync with its master', timeout: 20000 });
    c.masters = (await c.nodes()).filter((n) => n.master).map((n) => n.port).sort((a, b) => a - b);
    return c;
  }

  /** CLUSTER NODES from a live node: [{id, port, master, masterId, failed, slots}]. */
  async nodes() {
    for (const p of this.ports) {
      if (hasExited(this.procs.get(p))) continue;
      try {
        const out = await cli(p, 'CLUSTER', 'NODES');
        return out.split('\n').filter(Boolean).map((line) => {
          const [id, addr, flags, masterId, , , , , ...slots] = line.split(' ');
          const f = flags.split(',');
          return {
            id, port: Number(addr.split('@')[0].split(':')[1]), master: f.includes('master'),
            failed: f.includes('fail') || f.includes('fail?'), masterId: masterId === '-' ? null : masterId, slots,
          };
        });
      } catch { /* next */ }
    }
    throw new Error('no cluster node answered');
  }

  /** Herald's URL: the three masters as seeds. */
  get url() { return `redis+cluster://${this.masters.map((p) => `127.0.0.1:${p}`).join(',')}`; }

  cli(port, ...args) { return cli(port, ...args); }

  async kill9(port) { await stopProcess(this.procs.get(port), 'SIGKILL'); }

  processes() { return [...this.procs.values()]; }

  async stop() { await Promise.all(this.processes().map((p) => stopProcess(p, 'SIGKILL'))); }
}

// ---------------------------------------------------------------------------------------------
/** `n` Herald instances (A, B, C...) on `redisUrl`, started together (each waits for /ready). */
export async function startHeralds(redisUrl, { n = 3, env = {}, prefix = '' } = {}) {
  const nodes = [];
  for (let i = 0; i < n; i++) {
    nodes.push(new Herald({ name: `${prefix}${String.fromCharCode(65 + i)}`, port: await freePort(), redisUrl, env }));
  }
  try {
    await Promise.all(nodes.map((h) => h.start()));
  } catch (e) {
    await Promise.all(nodes.map((h) => h.kill9()));
    throw e;
  }
  return nodes;
}

/**
 * A Herald that is not expected to become ready (a wrong password, a CA that does not verify):
 * spawned as Herald.start() does, without waiting for /ready 200.
 */
export function spawnUnready(opts) {
  const h = new Herald(opts);
  h.starting = h.start().catch(() => {}); // spawns at once; its readiness wait is not awaited
  return h;
}

/**
 * Whether this Herald binary takes `url` as its redis.url: started against a port nobody
 * listens on, it either serves /health (accepted: waiting for Redis) or exits (a URL it does not
 * parse). {ok, reason}.
 */
export async function heraldAcceptsUrl(url) {
  const h = spawnUnready({ name: 'probe', port: await freePort(), redisUrl: url });
  try {
    const r = await waitUntil(async () => {
      if (hasExited(h.proc)) return { ok: false, reason: h.logTail(100000).split('\n').find((l) => /^Error/.test(l)) ?? 'exited' };
      return (await fetch(`${h.url}/health`)).status ? { ok: true } : null;
    }, { what: `herald to start with ${url}`, timeout: 10000 });
    return r;
  } finally { await h.kill9(); }
}

/** GET /ready: {status, body}. */
export async function readiness(h) {
  const res = await fetch(`${h.url}/ready`);
  let body = null;
  try { body = await res.json(); } catch { /* not json */ }
  return { status: res.status, body };
}

/** py/deploy_emitter.py in the JSON-era venv: the lib/python.js PyEmitter protocol. */
export async function startPyDeployEmitter(mode, url, redisOptions = {}, venv = '.venv-json') {
  const e = Object.create(PyEmitter.prototype);
  e.label = `${venv}/deploy/${mode}`;
  e.proc = spawn(join(HERE, venv, 'bin', 'python'),
    [join(HERE, 'py', 'deploy_emitter.py'), '--mode', mode, '--url', url, '--redis-options', JSON.stringify(redisOptions)],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  e.stderr = '';
  e.proc.stderr.on('data', (d) => { e.stderr += d; });
  e.lines = createInterface({ input: e.proc.stdout })[Symbol.asyncIterator]();
  const first = await e.next();
  if (!first.ready) throw new Error(`emitter ${e.label} did not start: ${e.stderr}`);
  e.version = first.python_socketio;
  return e;
}

export const readText = (path) => readFileSync(path, 'utf8');
