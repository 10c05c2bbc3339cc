// 3. Herald's own JSON channels: PUBLISH notify:user|role|project|room|global, from redis-cli
//    and from node-redis, reach the right sockets on 3 instances exactly once.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from 'redis';
import { startCluster, uid } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, notif } from '../lib/client.js';

let cluster; let pub; let a; let b; let c;
before(async () => {
  cluster = await startCluster(3);
  pub = createClient({ url: cluster.redis.url });
  await pub.connect();
  const [A, B, C] = cluster.nodes;
  [a, b, c] = await Promise.all([
    connect(A.url, uid('nt'), { label: 'admin@A', claims: { role: 'admin', projects: ['p1'] } }),
    connect(B.url, uid('nt'), { label: 'ops@B', claims: { role: 'ops', projects: ['p1', 'p2'] } }),
    connect(C.url, uid('nt'), { label: 'plain@C' }),
  ]);
  const ack = await c.socket.timeout(3000).emitWithAck('room:join', 'system-alerts');
  assert.deepEqual(ack, { ok: true, room: 'system-alerts' });
});
after(async () => {
  closeAll(a, b, c);
  await pub?.quit().catch(() => {});
  await cluster?.stop();
});


describe('notify:* channels', () => {
  it('redis-cli PUBLISH notify:user:<id> reaches that user only, once, with an id', async () => {
    const uidA = JSON.parse(Buffer.from(a.token.split('.')[1], 'base64url')).user_id;
    const n = await cluster.redis.cli('PUBLISH', `notify:user:${uidA}`, JSON.stringify({ type: 'info', message: 'cli', marker: 'cli-user' }));
    assert.equal(n.trim(), '3', 'all three instances are subscribed');
    const [got] = await expectExactlyOnce(a.col, [{ pred: notif('cli-user'), what: 'notify:user' }]);
    assert.equal(got.args[0].message, 'cli');
    assert.ok(got.args[0].id, 'stored notification has an id');
    for (const x of [b, c]) assert.equal(x.col.matching(notif('cli-user')).length, 0);
  });

  it('node-redis PUBLISH notify:role, notify:project, notify:room, notify:global', async () => {
    await pub.publish('notify:role:ops', JSON.stringify({ type: 'alert', message: 'ops only', marker: 'role-ops' }));
    await pub.publish('notify:project:p1', JSON.stringify({ type: 'build', marker: 'proj-p1' }));
    await pub.publish('notify:room:system-alerts', JSON.stringify({ type: 'sys', marker: 'room-sys' }));
    await pub.publish('notify:global', JSON.stringify({ type: 'global', message: 'everyone', marker: 'global' }));

    await expectExactlyOnce(a.col, [
      { pred: notif('proj-p1'), what: 'notify:project:p1' },
      { pred: notif('global'), what: 'notify:global' },
    ]);
    await expectExactlyOnce(b.col, [
      { pred: notif('role-ops'), what: 'notify:role:ops' },
      { pred: notif('proj-p1'), what: 'notify:project:p1' },
      { pred: notif('global'), what: 'notify:global' },
    ], { quiet: 0 });
    await expectExactlyOnce(c.col, [
      { pred: notif('room-sys'), what: 'notify:room:system-alerts' },
      { pred: notif('global'), what: 'notify:global' },
    ], { quiet: 0 });
    assert.equal(a.col.matching(notif('role-ops')).length + c.col.matching(notif('role-ops')).length, 0, 'role leak');
    assert.equal(c.col.matching(notif('proj-p1')).length, 0, 'project leak');
    assert.equal(a.col.matching(notif('room-sys')).length + b.col.matching(notif('room-sys')).length, 0, 'room leak');
    for (const x of [a, b, c]) assert.ok(x.col.matching(notif('global'))[0].args[0].id, 'stored global notification has an id');
  });
});
