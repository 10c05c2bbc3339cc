// 5. The Redis listener survives Redis trouble: CLIENT KILL TYPE pubsub, and kill -9 + restart of
//    redis-server on the same port, without restarting any Herald instance.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCluster, uid, waitUntil } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, notif, ev } from '../lib/client.js';
import { PyEmitter } from '../lib/python.js';

let cluster; let py; let a; let b; let c;
before(async () => {
  cluster = await startCluster(3);
  py = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
  const [A, B, C] = cluster.nodes;
  [a, b, c] = await Promise.all([connect(A.url, uid('rt'), { label: 'a@A' }), connect(B.url, uid('rt'), { label: 'b@B' }), connect(C.url, uid('rt'), { label: 'c@C' })]);
  for (const x of [a, b, c]) x.user = JSON.parse(Buffer.from(x.token.split('.')[1], 'base64url')).user_id;
});
after(async () => { py?.stop(); closeAll(a, b, c); await cluster?.stop(); });

/**
 * Sends probes (each with a fresh marker) every `every` ms until each collector has one, then
 * checks no probe arrived twice anywhere. Returns how long it took.
 */
async function probeUntilAll(send, cols, { timeout = 20000, every = 500, what = 'probe' } = {}) {
  const t0 = Date.now();
  let n = 0;
  const prefix = `${what}-${t0}-`;
  const has = (col) => col.events.some((e) => e.args.some((x) => typeof x?.marker === 'string' && x.marker.startsWith(prefix)) || (typeof e.args[0]?.data?.marker === 'string' && e.args[0].data.marker.startsWith(prefix)));
  while (!cols.every(has)) {
    if (Date.now() - t0 > timeout) throw new Error(`${what}: not every socket got a probe within ${timeout} ms (${n} sent); missing: ${cols.filter((c) => !has(c)).map((c) => c.label)}`);
    await send(`${prefix}${n++}`);
    await sleep(every);
  }
  await sleep(1000);
  for (const col of cols) {
    const markers = col.events.flatMap((e) => e.args.map((x) => x?.marker ?? x?.data?.marker)).filter((m) => typeof m === 'string' && m.startsWith(prefix));
    assert.equal(new Set(markers).size, markers.length, `${col.label}: a probe arrived twice: ${markers}`);
  }
  return Date.now() - t0;
}

describe('Redis trouble', () => {
  it('CLIENT KILL TYPE pubsub: the listeners resubscribe and python emits arrive again, once', async () => {
    const killed = await cluster.redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
    assert.ok(Number(killed) >= 3, `killed ${killed} pubsub connections`);
    const took = await probeUntilAll((m) => py.emit('probe', [{ marker: m }]), [a.col, b.col, c.col], { what: 'pykill' });
    console.log(`python emits arrive again ${took} ms after CLIENT KILL TYPE pubsub`);
    await py.emit('notification', [{ type: 'info', marker: 'after-kill' }], { to: [`user_${a.user}`, `user_${b.user}`, `user_${c.user}`] });
    for (const x of [a, b, c]) await expectExactlyOnce(x.col, [{ pred: notif('after-kill'), what: 'notification after CLIENT KILL' }], { quiet: x === a ? undefined : 0 });
    // cross-instance HTTP delivery (socketioxide-redis adapter) resubscribed too
    const [A] = cluster.nodes;
    await probeUntilAll((m) => A.notify({ to: { user: c.user }, type: 'probe', message: 'x', data: { marker: m } }), [c.col], { what: 'httpkill' });
  });

  it('kill -9 redis-server: the API queues on disk, sockets stay, /health says down', async () => {
    const [A] = cluster.nodes;
    await cluster.redis.kill9();
    await waitUntil(async () => (await A.health()).redis === 'down', { what: '/health redis down' });
    // Not stored yet, so not delivered yet: queued in the instance's outbox, in order.
    const r = await A.api('POST', '/api/v1/notify', { to: { user: a.user }, type: 'info', message: 'redis down', data: { marker: 'while-down' } });
    assert.deepEqual([r.status, r.body], [202, { id: null, queued: true }], `notify while Redis down: ${r.status} ${JSON.stringify(r.body)}`);
    const e = await A.api('POST', '/api/v1/emit', { event: 'local-emit', args: [{ marker: 'emit-down' }], rooms: [`user_${a.user}`] });
    assert.deepEqual([e.status, e.body], [202, { ok: true, queued: true }], `emit while Redis down: ${e.status} ${JSON.stringify(e.body)}`);
    assert.equal((await A.health()).status, 'ok');
    await sleep(500);
    assert.equal(a.col.matching(notif('while-down')).length, 0, 'delivered only once stored');
    assert.ok(a.socket.connected && b.socket.connected && c.socket.connected, 'sockets survive the outage');
  });

  it('restart on the same port: what was queued arrives once, and the first notification each instance handles afterwards is stored', async () => {
    const [A, B, C] = cluster.nodes;
    await cluster.redis.start();
    for (const node of [A, B, C]) await waitUntil(async () => (await node.health()).redis === 'up', { timeout: 20000, what: `${node.name} /health redis up` });
    await expectExactlyOnce(a.col, [
      { pred: notif('while-down'), what: 'queued notification, once Redis is back' },
      { pred: ev('local-emit', 'emit-down'), what: 'queued emit, once Redis is back' },
    ]);
    assert.match(a.col.matching(notif('while-down'))[0].args[0].id, /^\d+-\d+$/, 'stored, with its id');
    const offline = uid('off');
    const sent = [];
    for (const node of [A, B, C]) {
      const r = await node.api('POST', '/api/v1/notify', { to: { user: offline }, type: 'info', message: `first on ${node.name} after restart`, data: { marker: `first-${node.name}` } });
      sent.push(`${node.name}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    await sleep(1000);
    const r = await A.api('GET', `/api/v1/users/${offline}/notifications`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const markers = r.body.items.map((i) => i.data?.marker ?? i.marker).sort();
    assert.deepEqual(markers, ['first-A', 'first-B', 'first-C'], `stored after the restart: ${JSON.stringify(r.body.items)}; sent ${sent.join('; ')}`);
  });

  it('after the restart cross-instance delivery resumes by itself', async () => {
    const [A, B, C] = cluster.nodes;
    const took = await probeUntilAll((m) => A.notify({ to: { user: c.user }, type: 'probe', message: 'x', data: { marker: m } }), [c.col], { what: 'http-restart' });
    console.log(`cross-instance HTTP delivery back ${took} ms after redis health up`);
    const py2 = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
    try {
      await probeUntilAll((m) => py2.emit('probe', [{ marker: m }]), [a.col, b.col, c.col], { what: 'py-restart' });
      await B.notify({ to: { users: [a.user, c.user] }, type: 'info', message: 'after restart', data: { marker: 'after-restart' } });
      await py2.emit('notification', [{ marker: 'py-after-restart' }], { to: `user_${b.user}` });
      await expectExactlyOnce(a.col, [{ pred: notif('after-restart'), what: 'B → a@A after restart' }]);
      await expectExactlyOnce(c.col, [{ pred: notif('after-restart'), what: 'B → c@C after restart' }], { quiet: 0 });
      await expectExactlyOnce(b.col, [{ pred: notif('py-after-restart'), what: 'python → b@B after restart' }], { quiet: 0 });
    } finally { py2.stop(); }
  });
});
