// 8. Edges of "stored once" across instances: identical notifications sent on purpose are both
//    kept; an instance that joins later (and so saw fewer copies of an identical message) stamps
//    the same id as the others; producers' own `id` fields are kept (stream id in `_herald_id`);
//    a stored broadcast is stored once; node-emitter notifications are stored once.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClient } from 'redis';
import { Emitter } from '@socket.io/redis-emitter';
import { startCluster, uid, waitUntil, Herald, freePort, run } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, notif, QUIET_MS } from '../lib/client.js';
import { PyEmitter } from '../lib/python.js';

let cluster; let py; let redisClient; let emitter;
before(async () => {
  cluster = await startCluster(2);
  py = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
  redisClient = createClient({ url: cluster.redis.url });
  await redisClient.connect();
  emitter = new Emitter(redisClient);
});
after(async () => {
  py?.stop();
  await redisClient?.quit().catch(() => {});
  await cluster?.stop();
});

async function listed(node, user) {
  const r = await node.api('GET', `/api/v1/users/${encodeURIComponent(user)}/notifications`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.items;
}

describe('stored-once edges', () => {
  it('two identical notifications sent on purpose are both stored and both delivered', async () => {
    const [A, B] = cluster.nodes;
    const user = uid('dd');
    const a = await connect(A.url, user, { label: 'u@A' });
    const b = await connect(B.url, user, { label: 'u@B' });
    try {
      const same = { type: 'info', message: 'same bytes', marker: 'twice' };
      await py.emit('notification', [same], { to: `user_${user}` });
      await py.emit('notification', [same], { to: `user_${user}` });
      for (const x of [a, b]) await x.col.waitFor(notif('twice'), { count: 2, what: 'both copies' });
      await sleep(QUIET_MS);
      for (const x of [a, b]) {
        const got = x.col.matching(notif('twice'));
        assert.equal(got.length, 2, `${x.col.label} got ${got.length}`);
        assert.notEqual(got[0].args[0].id, got[1].args[0].id, 'distinct ids');
      }
      assert.deepEqual(a.col.matching(notif('twice')).map((e) => e.args[0].id), b.col.matching(notif('twice')).map((e) => e.args[0].id), 'same ids on both instances');
      const items = (await listed(A, user)).filter((i) => i.marker === 'twice');
      assert.equal(items.length, 2, JSON.stringify(items));
    } finally { closeAll(a, b); }
  });

  it("a producer's own id is kept and the stream id goes in _herald_id", async () => {
    const [A, B] = cluster.nodes;
    const user = uid('dd');
    const a = await connect(B.url, user, { label: 'u@B' });
    try {
      await py.emit('notification', [{ id: 'producer-42', type: 'info', marker: 'own-id' }], { to: `user_${user}` });
      const [got] = await expectExactlyOnce(a.col, [{ pred: notif('own-id'), what: 'notification with own id' }]);
      assert.equal(got.args[0].id, 'producer-42');
      assert.ok(got.args[0]._herald_id, `_herald_id present: ${JSON.stringify(got.args[0])}`);
      const items = (await listed(A, user)).filter((i) => i.marker === 'own-id');
      assert.equal(items.length, 1, JSON.stringify(items));
    } finally { closeAll(a); }
  });

  it('a stored broadcast (python, event notification, no room) is stored once and replayed once', async () => {
    const [A, B] = cluster.nodes;
    const user = uid('dd');
    const first = await connect(A.url, user, { label: 'first@A' });
    first.socket.disconnect();
    await sleep(300);
    await py.emit('notification', [{ type: 'broadcast', marker: 'stored-bcast' }]);
    emitter.emit('notification', { type: 'broadcast', marker: 'stored-bcast-node' });
    await sleep(QUIET_MS);
    const again = await connect(B.url, user, { label: 'again@B' });
    try {
      await expectExactlyOnce(again.col, [
        { pred: notif('stored-bcast'), what: 'python broadcast replayed' },
        { pred: notif('stored-bcast-node'), what: 'node-emitter broadcast replayed' },
      ]);
    } finally { closeAll(again); }
  });

  it('node-emitter notification to user_<id> is stored once', async () => {
    const [A, B] = cluster.nodes;
    const user = uid('dd');
    emitter.to(`user_${user}`).emit('notification', { type: 'info', marker: 'node-stored' });
    const mine = async (node) => (await listed(node, user)).filter((i) => i.marker === 'node-stored');
    await waitUntil(async () => (await mine(B)).length >= 1, { what: 'stored' });
    await sleep(QUIET_MS);
    const items = await mine(A);
    assert.equal(items.length, 1, `listed ${items.length} times (the listing also has the namespace's stored broadcasts): ${JSON.stringify(items)}`);
  });

  it('an instance started later stamps the same id as the others for an identical message', async () => {
    const [A] = cluster.nodes;
    const user = uid('dd');
    const same = { type: 'info', message: 'identical', marker: 'late' };
    // first copy: only A and B are running
    await py.emit('notification', [same], { to: `user_${user}` });
    await waitUntil(async () => (await listed(A, user)).length >= 1, { what: 'first copy stored' });
    // C starts now, so it has seen no copy of these bytes yet
    const C = await new Herald({ name: 'C', port: await freePort(), redisUrl: cluster.redis.url, env: {} }).start();
    try {
      const onA = await connect(A.url, user, { label: 'u@A', tokenIn: 'auth' });
      const onC = await connect(C.url, user, { label: 'u@C', tokenIn: 'auth' });
      try {
        await py.emit('notification', [same], { to: `user_${user}` });
        const [viaA] = await expectExactlyOnce(onA.col, [{ pred: notif('late'), what: 'second copy on A' }]);
        const [viaC] = await expectExactlyOnce(onC.col, [{ pred: notif('late'), what: 'second copy on C' }], { quiet: 0 });
        const items = (await listed(A, user)).filter((i) => i.marker === 'late');
        assert.equal(items.length, 2, `both copies stored: ${JSON.stringify(items)}`);
        const newest = items.map((i) => i.id).sort().at(-1);
        assert.equal(viaA.args[0].id, newest, 'A stamps the new entry id');
        // what a client on C sees: resuming after the id it was given replays what it already has
        closeAll(onC);
        const back = await connect(C.url, user, { label: 'u@C again', tokenIn: 'auth', opts: { auth: { token: onC.token, last_id: viaC.args[0].id } } });
        try {
          await sleep(QUIET_MS);
          const replayed = back.col.matching(notif('late'));
          assert.equal(replayed.length, 0, `reconnect to C with auth.last_id=${viaC.args[0].id} (the id C stamped on the copy it delivered) replays ${replayed.length} notification(s) the client already had: ${back.col.describe()}`);
        } finally { closeAll(back); }
        assert.equal(viaC.args[0].id, viaA.args[0].id, `C (started later) stamps ${viaC.args[0].id}, A stamps ${viaA.args[0].id}; stored ids ${items.map((i) => i.id)}`);
      } finally { closeAll(onA, onC); }
    } finally { await C.stop(); }
  });

  it('an instance whose subscription was cut (CLIENT KILL ID) stamps the same id as the others for an identical message', async () => {
    const [A, B] = cluster.nodes;
    const user = uid('dd');
    const onA = await connect(A.url, user, { label: 'u@A', tokenIn: 'auth' });
    const onB = await connect(B.url, user, { label: 'u@B', tokenIn: 'auth' });
    try {
      // A's pub/sub connection: the pubsub client whose local port belongs to A's process
      const list = (await cluster.redis.cli('CLIENT', 'LIST', 'TYPE', 'pubsub')).trim().split('\n');
      let victim;
      for (const line of list) {
        const id = line.match(/\bid=(\d+)/)[1];
        const port = line.match(/\baddr=[^ ]*:(\d+)/)[1];
        const ss = await run('ss', ['-tnpH', 'state', 'established', `( sport = :${port} )`]);
        if (ss.includes(`pid=${A.proc.pid},`)) victim = id;
      }
      assert.ok(victim, `found A's pub/sub connection among ${list.length}`);
      const same = { type: 'info', message: 'identical', marker: 'cut' };
      await cluster.redis.cli('CLIENT', 'KILL', 'ID', victim);
      await py.emit('notification', [same], { to: `user_${user}` }); // A is resubscribing: only B hears it
      await onB.col.waitFor(notif('cut'), { what: 'first copy on B' });
      // wait until A hears pub/sub again
      let n = 0;
      await waitUntil(async () => {
        await py.emit('probe', [{ marker: `cut-probe-${n++}` }], { to: `user_${user}` });
        await sleep(300);
        return onA.col.matching((e) => e.event === 'probe').length > 0;
      }, { timeout: 20000, what: 'A resubscribed' });
      await py.emit('notification', [same], { to: `user_${user}` });
      await onB.col.waitFor(notif('cut'), { count: 2, what: 'second copy on B' });
      await onA.col.waitFor(notif('cut'), { what: 'second copy on A' });
      await sleep(QUIET_MS);
      const idsB = onB.col.matching(notif('cut')).map((e) => e.args[0].id);
      const idsA = onA.col.matching(notif('cut')).map((e) => e.args[0].id);
      const stored = (await listed(B, user)).filter((i) => i.marker === 'cut').map((i) => i.id);
      assert.equal(stored.length, 2, `both copies stored: ${stored}`);
      assert.equal(idsA.length, 1, `A missed the first copy (sent while it resubscribed) and got the second once: ${idsA}`);
      assert.equal(idsA[0], idsB[1], `A stamps ${idsA[0]} on the second copy, B stamps ${idsB[1]} (B's ids ${idsB}; stored ${stored})`);
    } finally { closeAll(onA, onB); }
  });
});
