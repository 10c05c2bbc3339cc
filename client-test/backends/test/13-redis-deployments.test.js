// 13. Redis as users run it: TLS only with an ACL user and a private CA, Sentinel (master +
//     replica + 3 sentinels), Redis Cluster (3 masters + 3 replicas). On each: 3 real Herald
//     processes; cross-instance delivery to a real socket.io-client; the python emitters
//     (python-socketio RedisManager, Flask-SocketIO) and @socket.io/redis-emitter connected the
//     way a backend connects to that deployment, each reaching a socket once; a stored
//     notification replayed once on reconnect to another instance. Then the failures: kill -9 of
//     the master (Sentinel) or of a cluster master — delivery and storage resume with no restart
//     of Herald; figures printed (seconds until cross-instance delivery resumed, notifications
//     lost out of those accepted with a 2xx). TLS: a wrong password and a CA that did not sign
//     the server's certificate are a 503 on /ready naming the problem.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClient } from 'redis';
import { Emitter } from '@socket.io/redis-emitter';
import { uid, waitUntil, hasExited, freePort, RUN_DIR, API_KEY } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, notif, QUIET_MS } from '../lib/client.js';
import { TlsRedis, SentinelRedis, ClusterRedis, startHeralds, spawnUnready, readiness, startPyDeployEmitter, heraldAcceptsUrl } from '../lib/redis-topologies.js';

// redis+cluster:// is recent: with a binary that does not parse it, the Cluster part is skipped
// with the reason (printed), not failed.
const clusterUrlSupport = await heraldAcceptsUrl(`redis+cluster://127.0.0.1:${await freePort()},127.0.0.1:${await freePort()}`);
if (!clusterUrlSupport.ok) console.log(`# cluster: SKIPPED: this herald does not take redis+cluster:// (${clusterUrlSupport.reason})`);

const figures = {};
function record(deployment, key, value) {
  (figures[deployment] ??= {})[key] = value;
  writeFileSync(join(RUN_DIR, 'redis-deployments-figures.json'), `${JSON.stringify(figures, null, 2)}\n`);
}

/** Two tabs of one user, on A and on C. */
async function tabs(nodes, tag) {
  const user = uid(tag);
  const [A, , C] = nodes;
  const [a, c] = await Promise.all([
    connect(A.url, user, { label: `${tag}@A`, tokenIn: 'auth' }),
    connect(C.url, user, { label: `${tag}@C` }),
  ]);
  return { user, a, c };
}

const once = (marker, what) => ({ pred: notif(marker), what });

/** Cross-instance: POST to B, a socket on A and one on C each get it once, with its id. */
async function crossInstance(nodes, tag) {
  const { user, a, c } = await tabs(nodes, tag);
  try {
    const id = await nodes[1].notify({ to: { user }, type: 'info', message: 'across', data: { marker: `${tag}-x` } });
    assert.ok(id, 'a stored id');
    for (const tab of [a, c]) {
      const [got] = await expectExactlyOnce(tab.col, [once(`${tag}-x`, 'POSTed to B')], { quiet: tab === a ? QUIET_MS : 0 });
      assert.equal(got.args[0].id, id);
    }
  } finally { closeAll(a, c); }
}

/** Each python emitter (already started) emits a notification to user_<id>: once on each tab. */
async function pythonEmitters(nodes, tag, emitters) {
  const { user, a, c } = await tabs(nodes, tag);
  try {
    for (const py of emitters) {
      await py.emit('notification', [{ type: 'info', message: `from ${py.label}`, marker: `${tag}-${py.label}` }], { to: `user_${user}` });
    }
    for (const tab of [a, c]) {
      const got = await expectExactlyOnce(tab.col, emitters.map((py) => once(`${tag}-${py.label}`, `python ${py.label} (python-socketio ${py.version})`)),
        { quiet: tab === a ? QUIET_MS : 0 });
      for (const g of got) assert.ok(g.args[0].id, `stored, with an id: ${JSON.stringify(g.args[0])}`);
    }
  } finally { closeAll(a, c); }
}

/** @socket.io/redis-emitter over a node-redis client made with `clientOptions`. */
async function nodeEmitter(nodes, tag, clientOptions) {
  const { user, a, c } = await tabs(nodes, tag);
  const client = createClient(clientOptions);
  client.on('error', () => {});
  try {
    await client.connect();
    new Emitter(client).to(`user_${user}`).emit('notification', { type: 'info', message: 'from node', marker: `${tag}-node` });
    for (const tab of [a, c]) {
      const [got] = await expectExactlyOnce(tab.col, [once(`${tag}-node`, '@socket.io/redis-emitter')], { quiet: tab === a ? QUIET_MS : 0 });
      assert.ok(got.args[0].id, 'stored, with an id');
    }
  } finally {
    closeAll(a, c);
    await client.quit().catch(() => {});
  }
}

/** An offline user (online once on A): POST to B (retried until stored), reconnect on C → once. */
async function storedReplay(nodes, tag) {
  const [A, B, C] = nodes;
  const user = uid(tag);
  const first = await connect(A.url, user, { label: `${tag}-first@A` });
  first.socket.disconnect();
  await sleep(300);
  let id = null;
  await waitUntil(async () => { // a 503 is a refusal: retry it
    const r = await B.api('POST', '/api/v1/notify', { to: { user }, type: 'info', message: 'while offline', data: { marker: `${tag}-stored` } });
    assert.ok(r.status === 202 || r.status === 503, `notify: ${r.status} ${JSON.stringify(r.body)}`);
    id = r.body?.id;
    return r.status === 202;
  }, { what: 'a notification accepted (202)', timeout: 20000, interval: 300 });
  assert.equal(typeof id, 'string', 'stored at once (not queued): Redis is reachable');
  const again = await connect(C.url, user, { label: `${tag}-again@C`, tokenIn: 'auth' });
  try {
    const [got] = await expectExactlyOnce(again.col, [once(`${tag}-stored`, 'replayed on reconnect to C')]);
    assert.equal(got.args[0].id, id);
  } finally { closeAll(again); }
}

/**
 * One notification every ~100 ms, POSTed to B for a user online on A (token in auth), from
 * before `kill()` until delivery has resumed for 1 s; then everything accepted (2xx) must
 * arrive once. Returns the figures.
 */
async function failover(nodes, tag, kill, { resumeTimeoutMs = 40000 } = {}) {
  const [A, B] = nodes;
  const user = uid(tag);
  const tab = await connect(A.url, user, { label: `${tag}-online@A`, tokenIn: 'auth' });
  const pids = nodes.map((h) => h.proc.pid);
  const sends = [];
  const markerOf = (e) => e.event === 'notification' ? e.args[0]?.data?.marker : undefined;
  const index = (m) => (typeof m === 'string' && m.startsWith(`${tag}-fo-`) ? Number(m.slice(tag.length + 4)) : -1);
  const post = (i) => {
    const s = { i, at: Date.now(), status: null };
    sends.push(s);
    s.done = fetch(`${B.url}/api/v1/notify`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ to: { user }, type: 'info', message: `failover ${i}`, data: { marker: `${tag}-fo-${i}` } }),
      signal: AbortSignal.timeout(15000),
    }).then(async (r) => { s.status = r.status; s.body = await r.json().catch(() => null); s.answeredAt = Date.now(); })
      .catch((e) => { s.status = 'error'; s.error = e.message; s.answeredAt = Date.now(); });
  };
  let i = 0;
  let killedAt; let killIndex; let resumedAt = null; let stopAt = null;
  const deadline = Date.now() + resumeTimeoutMs;
  try {
    for (; i < 5; i++) { post(i); await sleep(100); }
    await Promise.all(sends.map((s) => s.done));
    await tab.col.waitFor((e) => index(markerOf(e)) === 4, { what: 'the warm-up notifications' });
    killIndex = i;
    killedAt = Date.now();
    await kill();
    for (;;) {
      post(i++);
      await sleep(100);
      if (resumedAt === null) {
        const after = tab.col.events.filter((e) => index(markerOf(e)) >= killIndex);
        if (after.length) { resumedAt = Math.min(...after.map((e) => e.at)); stopAt = Date.now() + 1000; }
      }
      if (stopAt !== null && Date.now() >= stopAt) break;
      if (Date.now() > deadline) break;
    }
    await Promise.all(sends.map((s) => s.done));
    const accepted = sends.filter((s) => typeof s.status === 'number' && s.status >= 200 && s.status < 300);
    const want = new Set(accepted.map((s) => s.i));
    // what was accepted while Redis was away waits in an outbox: give it time to arrive
    await waitUntil(() => [...want].every((n) => tab.col.events.some((e) => index(markerOf(e)) === n)),
      { what: 'every accepted notification', timeout: 15000 }).catch(() => {});
    await sleep(QUIET_MS);
    const counts = new Map();
    for (const e of tab.col.events) { const n = index(markerOf(e)); if (n >= 0) counts.set(n, (counts.get(n) ?? 0) + 1); }
    const lost = [...want].filter((n) => !counts.has(n));
    const dup = [...counts].filter(([, k]) => k > 1).map(([n]) => n);
    const unexpected = sends.filter((s) => !(typeof s.status === 'number' && ((s.status >= 200 && s.status < 300) || s.status === 503)));
    const order = tab.col.events.map((e) => index(markerOf(e))).filter((n) => n >= killIndex);
    // storage through the new master: what was accepted after the kill is in the history once
    const hist = await nodes[2].api('GET', `/api/v1/users/${encodeURIComponent(user)}/notifications?limit=100`);
    assert.equal(hist.status, 200, JSON.stringify(hist.body));
    const listed = new Map();
    for (const item of hist.body.items) { const n = index(item?.data?.marker); if (n >= 0) listed.set(n, (listed.get(n) ?? 0) + 1); }
    const acceptedAfterKill = accepted.filter((s) => s.i >= killIndex).map((s) => s.i);
    const fig = {
      resumed_after_s: resumedAt === null ? null : Number(((resumedAt - killedAt) / 1000).toFixed(2)),
      sent: sends.length,
      sent_after_kill: sends.length - killIndex,
      accepted_2xx: accepted.length,
      queued: accepted.filter((s) => s.body?.queued).length,
      refused_503: sends.filter((s) => s.status === 503).length,
      other_answers: unexpected.map((s) => `${s.i}:${s.status}${s.error ? ` ${s.error}` : ''}`),
      arrived: counts.size,
      lost: lost.length,
      lost_indexes: lost,
      duplicated: dup.length,
      accepted_after_kill: acceptedAfterKill.length,
      stored_once_after_kill: acceptedAfterKill.filter((n) => listed.get(n) === 1).length,
      listed_twice: [...listed].filter(([, k]) => k > 1).map(([n]) => n),
      // Herald orders what it has answered: a notification answered before another was sent
      // arrives before it. Requests in flight at the same time (one every 100 ms, some held for
      // seconds by the failover) have no order between them.
      in_order: order.every((n, k) => order.slice(k + 1).every((m) => m > n || !(sends[m].answeredAt <= sends[n].at))),
      herald_restarted: nodes.some((h, k) => hasExited(h.proc) || h.proc.pid !== pids[k]),
    };
    return fig;
  } finally { closeAll(tab); }
}

function report(deployment, fig, what) {
  record(deployment, 'failover', fig);
  console.log(`# ${deployment}: ${what}: cross-instance delivery resumed ${fig.resumed_after_s} s after the kill; `
    + `sent ${fig.sent} (${fig.sent_after_kill} after the kill), accepted ${fig.accepted_2xx} (queued ${fig.queued}), `
    + `refused 503 ${fig.refused_503}, lost ${fig.lost}, duplicated ${fig.duplicated}; `
    + `stored once ${fig.stored_once_after_kill}/${fig.accepted_after_kill} accepted after the kill; in order ${fig.in_order}`
    + `${fig.other_answers.length ? `, other answers ${fig.other_answers.join(' ')}` : ''}`);
}

function assertFailover(fig) {
  assert.ok(fig.resumed_after_s !== null, `delivery did not resume: ${JSON.stringify(fig)}`);
  assert.equal(fig.herald_restarted, false, 'no Herald exited or was restarted');
  assert.deepEqual(fig.other_answers, [], 'every answer a 2xx or a 503');
  assert.equal(fig.lost, 0, `accepted but never delivered: ${JSON.stringify(fig.lost_indexes)}`);
  assert.equal(fig.duplicated, 0, 'delivered twice');
  assert.ok(fig.in_order, 'what was sent after the kill arrived in order');
  assert.equal(fig.stored_once_after_kill, fig.accepted_after_kill, 'what was accepted after the kill is stored, once');
  assert.deepEqual(fig.listed_twice, [], 'listed twice in the history');
}

// -------------------------------------------------------------------------------------------
describe('TLS-only redis-server, private CA, ACL user', () => {
  let redis; let nodes = []; let pys = []; let unready = [];
  before(async () => {
    redis = await TlsRedis.start();
    nodes = await startHeralds(redis.url(), { env: { HERALD__REDIS__TLS_CA_FILE: redis.caFile }, prefix: 'tls' });
  });
  after(async () => {
    for (const p of pys) p.stop();
    await Promise.all([...nodes, ...unready].map((h) => h.stop()));
    await redis?.stop();
  });

  it('3 instances on rediss://herald:…@: cross-instance delivery, once per tab', async () => {
    for (const h of nodes) assert.equal((await h.health()).redis, 'up');
    await crossInstance(nodes, 'tlsx');
  });

  it('python emitters over TLS: Flask-SocketIO (rediss://…?ssl_ca_certs=) and RedisManager (redis_options)', async () => {
    pys.push(await startPyDeployEmitter('flask', `${redis.url()}?ssl_ca_certs=${encodeURIComponent(redis.caFile)}`));
    pys.push(await startPyDeployEmitter('redis', redis.url(), { ssl_ca_certs: redis.caFile }));
    await pythonEmitters(nodes, 'tlspy', pys);
  });

  it('@socket.io/redis-emitter on node-redis with TLS options (ca)', async () => {
    await nodeEmitter(nodes, 'tlsnode', { url: redis.url(), socket: { tls: true, ca: readFileSync(redis.caFile) } });
  });

  it('a stored notification to an offline user is replayed once on another instance', async () => {
    await storedReplay(nodes, 'tlsst');
  });

  it('wrong password, a CA that did not sign the certificate: /ready 503 naming the problem', async () => {
    const env = { HERALD__REDIS__TLS_CA_FILE: redis.caFile };
    const wrongPassword = spawnUnready({ name: 'tls-wrongpw', port: await freePort(), redisUrl: redis.url('not-the-password'), env });
    const wrongCa = spawnUnready({ name: 'tls-wrongca', port: await freePort(), redisUrl: redis.url(),
      env: { HERALD__REDIS__TLS_CA_FILE: redis.otherCaFile } });
    unready = [wrongPassword, wrongCa];
    for (const [h, pattern, label] of [[wrongPassword, /password|auth/i, 'wrong password'], [wrongCa, /certificate|unknownissuer/i, 'bad certificate']]) {
      const r = await waitUntil(async () => {
        const x = await readiness(h);
        return typeof x.body?.error === 'string' ? x : null;
      }, { what: `${h.name}: /ready with a reason`, timeout: 15000 });
      console.log(`# TLS: ${label}: /ready ${r.status} ${JSON.stringify(r.body)}`);
      record('tls', `ready_${label.replace(' ', '_')}`, r);
      assert.equal(r.status, 503);
      assert.match(r.body.error, pattern);
      assert.ok(!r.body.error.includes(TlsRedis.PASSWORD) && !r.body.error.includes('not-the-password'), 'no password in the reason');
      assert.ok((await h.health()).status !== undefined, `${h.name} still serves /health`);
      assert.ok(!hasExited(h.proc), `${h.name} did not exit`);
    }
  });
});

// -------------------------------------------------------------------------------------------
describe('Sentinel: master + replica + 3 sentinels', () => {
  let s; let nodes = []; let pys = [];
  before(async () => {
    s = await SentinelRedis.start();
    nodes = await startHeralds(s.url, { prefix: 'sn' });
  });
  after(async () => {
    for (const p of pys) p.stop();
    await Promise.all(nodes.map((h) => h.stop()));
    await s?.stop();
  });

  it('3 instances on redis+sentinel://: cross-instance delivery, once per tab', async () => {
    await crossInstance(nodes, 'snx');
  });

  it('python emitters on redis+sentinel://…/0/mymaster: RedisManager and Flask-SocketIO (client_manager)', async () => {
    pys.push(await startPyDeployEmitter('redis', s.pythonUrl));
    pys.push(await startPyDeployEmitter('flask-manager', s.pythonUrl));
    await pythonEmitters(nodes, 'snpy', pys);
  });

  it('@socket.io/redis-emitter on the master a sentinel names', async () => {
    await nodeEmitter(nodes, 'snnode', { url: `redis://127.0.0.1:${await s.masterPort()}` });
  });

  it('a stored notification to an offline user is replayed once on another instance', async () => {
    await storedReplay(nodes, 'snst');
  });

  it('kill -9 of the master: delivery resumes through the promoted replica, nothing accepted is lost', async () => {
    const oldMaster = await s.masterPort();
    const fig = await failover(nodes, 'snfo', () => s.kill9(oldMaster));
    fig.new_master = await s.masterPort();
    report('sentinel', fig, `kill -9 of the master (${oldMaster})`);
    assert.notEqual(fig.new_master, oldMaster, 'the sentinels promoted the replica');
    assertFailover(fig);
  });

  it('after the failover: storage and replay work, with no restart of Herald; the python emitters follow the new master', async () => {
    await storedReplay(nodes, 'snst2');
    await crossInstance(nodes, 'snx2');
    await pythonEmitters(nodes, 'snpy2', pys);
  });
});

// -------------------------------------------------------------------------------------------
describe('Redis Cluster: 3 masters + 3 replicas', { skip: clusterUrlSupport.ok ? false : `herald does not take redis+cluster:// yet: ${clusterUrlSupport.reason}` }, () => {
  let rc; let nodes = []; let pys = []; let victim;
  before(async () => {
    rc = await ClusterRedis.start();
    nodes = await startHeralds(rc.url, { prefix: 'rc' });
  });
  after(async () => {
    for (const p of pys) p.stop();
    await Promise.all(nodes.map((h) => h.stop()));
    await rc?.stop();
  });

  it('3 instances on redis+cluster://: cross-instance delivery, once per tab', async () => {
    await crossInstance(nodes, 'rcx');
  });

  it('python emitters on one node (PUBLISH reaches every node): Flask-SocketIO and RedisManager', async () => {
    const url = `redis://127.0.0.1:${rc.masters[1]}/0`;
    pys.push(await startPyDeployEmitter('flask', url));
    pys.push(await startPyDeployEmitter('redis', url));
    await pythonEmitters(nodes, 'rcpy', pys);
  });

  it('@socket.io/redis-emitter on a node-redis client of one node', async () => {
    await nodeEmitter(nodes, 'rcnode', { url: `redis://127.0.0.1:${rc.masters[2]}` });
  });

  it('a stored notification to an offline user is replayed once on another instance', async () => {
    await storedReplay(nodes, 'rcst');
  });

  it('kill -9 of the master holding the most keys: its replica takes over, delivery resumes, nothing accepted is lost', async () => {
    const sizes = await Promise.all(rc.masters.map(async (p) => [p, Number(await rc.cli(p, 'DBSIZE'))]));
    [victim] = sizes.sort((x, y) => y[1] - x[1])[0];
    const fig = await failover(nodes, 'rcfo', () => rc.kill9(victim));
    fig.killed_master = victim;
    fig.keys_per_master = Object.fromEntries(sizes);
    const now = await rc.nodes();
    fig.masters_after = now.filter((n) => n.master && !n.failed).map((n) => n.port);
    report('cluster', fig, `kill -9 of master ${victim} (keys per master ${JSON.stringify(fig.keys_per_master)})`);
    assert.equal(fig.masters_after.length, 3, `a replica was promoted: ${JSON.stringify(now)}`);
    assertFailover(fig);
  });

  it('after the failover: storage and replay work, with no restart of Herald; emitters on a surviving node reach the sockets', async () => {
    await storedReplay(nodes, 'rcst2');
    await crossInstance(nodes, 'rcx2');
    // Herald's subscriptions may have been on the dead node: a backend on a live one still reaches every socket
    const live = rc.masters.find((p) => p !== victim);
    const url = `redis://127.0.0.1:${live}/0`;
    const after = [];
    for (const mode of ['flask', 'redis']) { after.push(await startPyDeployEmitter(mode, url)); pys.push(after.at(-1)); }
    await pythonEmitters(nodes, 'rcpy2', after);
    await nodeEmitter(nodes, 'rcnode2', { url: `redis://127.0.0.1:${live}` });
  });
});
