// 4. Storage once: notifications for an offline user, entering through HTTP, the python emitter
//    and notify:user:, are stored once although 3 instances receive each pub/sub message; the
//    user reconnects to another instance with a stock client and gets exactly those, in order.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import { startCluster, uid, waitUntil, token } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, notif, Collector, QUIET_MS } from '../lib/client.js';
import { PyEmitter } from '../lib/python.js';

let cluster; let py;
before(async () => {
  cluster = await startCluster(3);
  py = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
});
after(async () => { py?.stop(); await cluster?.stop(); });

async function listed(node, user) {
  const r = await node.api('GET', `/api/v1/users/${encodeURIComponent(user)}/notifications`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.items;
}
const markerOf = (item) => item?.data?.marker ?? item?.marker ?? item?.payload?.marker ?? item?.args?.[0]?.marker ?? item?.args?.[0]?.data?.marker;

describe('stored once, replayed once', () => {
  it('offline user: HTTP + python + notify:user → reconnect elsewhere gets exactly those 3 in order, then live ones', async () => {
    const [A, B, C] = cluster.nodes;
    const user = uid('st');
    // Online once on A, then a clean disconnect: Herald now knows when the user was last online.
    const first = await connect(A.url, user, { label: 'first@A' });
    first.socket.disconnect();
    await sleep(500);

    const httpId = await A.notify({ to: { user }, type: 'info', message: 'via http', data: { marker: 's-http' } });
    await py.emit('notification', [{ type: 'info', message: 'via python', marker: 's-py' }], { to: `user_${user}` });
    await waitUntil(async () => (await listed(C, user)).length >= 2, { what: 'python notification stored' });
    await cluster.redis.cli('PUBLISH', `notify:user:${user}`, JSON.stringify({ type: 'info', message: 'via notify', marker: 's-notify' }));
    await waitUntil(async () => (await listed(C, user)).length >= 3, { what: '3 notifications stored' });
    await sleep(QUIET_MS); // let every instance finish handling its copy

    for (const node of cluster.nodes) {
      const items = await listed(node, user);
      const markers = items.map(markerOf);
      assert.equal(items.length, 3, `${node.name} lists ${items.length} items: ${JSON.stringify(items)}`);
      for (const m of ['s-http', 's-py', 's-notify']) assert.equal(markers.filter((x) => x === m).length, 1, `${node.name}: ${m} listed once: ${JSON.stringify(items)}`);
      assert.equal(new Set(items.map((i) => i.id)).size, 3, 'distinct ids');
      assert.ok(items.some((i) => i.id === httpId), 'HTTP id listed');
    }

    // Stock socket.io-client, default transports (polling then upgrade), token in the query.
    const socket = io(B.url, { forceNew: true, reconnection: false, query: { token: token(user) } });
    const col = new Collector(socket, 'again@B');
    try {
      const got = await expectExactlyOnce(col, [
        { pred: notif('s-http'), what: 'HTTP notification replayed' },
        { pred: notif('s-py'), what: 'python notification replayed' },
        { pred: notif('s-notify'), what: 'notify:user notification replayed' },
      ]);
      const notes = col.events.filter((e) => e.event === 'notification').map((e) => e.args[0]);
      assert.equal(notes[0].type, 'welcome', 'welcome first');
      assert.deepEqual(notes.slice(1).map(markerOf), ['s-http', 's-py', 's-notify'], `replayed in order: ${JSON.stringify(notes)}`);
      assert.equal(got[0].args[0].id, httpId);
      for (const g of got) assert.ok(g.args[0].id, 'replayed notification has an id');

      // then live ones, from each ingress, once each
      await C.notify({ to: { user }, type: 'info', message: 'live http', data: { marker: 'l-http' } });
      await py.emit('notification', [{ type: 'info', marker: 'l-py' }], { to: `user_${user}` });
      await cluster.redis.cli('PUBLISH', `notify:user:${user}`, JSON.stringify({ marker: 'l-notify' }));
      await expectExactlyOnce(col, ['l-http', 'l-py', 'l-notify'].map((m) => ({ pred: notif(m), what: `live ${m}` })));
      const items = await listed(A, user);
      assert.equal(items.length, 6, `6 stored: ${JSON.stringify(items.map(markerOf))}`);
    } finally {
      socket.disconnect();
    }
  });

  it('auth.last_id: replay resumes after the id the client passes', async () => {
    const [A, B, C] = cluster.nodes;
    const user = uid('st');
    const ids = [];
    for (const m of ['k1', 'k2', 'k3']) ids.push(await B.notify({ to: { user }, type: 'info', message: m, data: { marker: m } }));
    const c = await connect(C.url, user, { tokenIn: 'auth', opts: { auth: { token: token(user), last_id: ids[0] } }, label: 'last_id@C' });
    try {
      await expectExactlyOnce(c.col, [{ pred: notif('k2'), what: 'k2' }, { pred: notif('k3'), what: 'k3' }]);
      assert.equal(c.col.matching(notif('k1')).length, 0, 'k1 (≤ last_id) replayed');
    } finally { closeAll(c); }
    void A;
  });
});
