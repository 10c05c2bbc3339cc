// 7. nginx in front of two instances (hash $remote_addr consistent, WebSocket upgrade, long
//    timeouts): default transports (polling then upgrade) and websocket-only clients receive
//    notifications emitted on either instance.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startCluster, uid, token, waitUntil } from '../lib/cluster.js';
import { Collector, expectExactlyOnce, notif, ev, closeAll } from '../lib/client.js';
import { Nginx } from '../lib/nginx.js';
import { PyEmitter } from '../lib/python.js';

let cluster; let nginx; let py;
before(async () => {
  cluster = await startCluster(2);
  nginx = await Nginx.start(cluster.nodes.map((n) => n.port));
  py = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
});
after(async () => { py?.stop(); await nginx?.stop(); await cluster?.stop(); });

async function through(url, user, opts, label) {
  const socket = io(url, { forceNew: true, reconnection: false, query: { token: token(user) }, ...opts });
  const col = new Collector(socket, label);
  await col.waitFor((e) => e.event === 'notification' && e.args[0]?.type === 'welcome', { what: 'welcome' });
  return { socket, col, user };
}

describe('behind nginx', () => {
  it('polling→websocket and websocket-only clients get notifications emitted on either instance', async () => {
    const [A, B] = cluster.nodes;
    const poll = await through(nginx.url, uid('ng'), {}, 'default-transports@nginx');
    const ws = await through(nginx.url, uid('ng'), { transports: ['websocket'] }, 'websocket-only@nginx');
    const legacyPoll = await through(nginx.url, uid('ng'), { transports: ['polling'] }, 'polling-only@nginx');
    try {
      await waitUntil(() => poll.socket.io.engine.transport.name === 'websocket', { what: 'upgrade to websocket through nginx' });
      assert.equal(ws.socket.io.engine.transport.name, 'websocket');
      for (const [i, c] of [poll, ws, legacyPoll].entries()) {
        await A.notify({ to: { user: c.user }, type: 'info', message: 'from A', data: { marker: `a${i}` } });
        await B.notify({ to: { user: c.user }, type: 'info', message: 'from B', data: { marker: `b${i}` } });
        await py.emit('notification', [{ marker: `py${i}` }], { to: `user_${c.user}` });
      }
      const r = await B.api('POST', '/api/v1/emit', { event: 'custom', args: [{ marker: 'emitB' }, 2] });
      assert.equal(r.status, 202);
      for (const [i, c] of [poll, ws, legacyPoll].entries()) {
        await expectExactlyOnce(c.col, [
          { pred: notif(`a${i}`), what: 'notify on A' },
          { pred: notif(`b${i}`), what: 'notify on B' },
          { pred: notif(`py${i}`), what: 'python emit' },
          { pred: ev('custom', 'emitB'), what: '/api/v1/emit broadcast on B' },
        ], { quiet: i === 0 ? undefined : 0 });
      }
      // every client went through nginx to one of the two instances
      const counts = await Promise.all([A, B].map(async (n) => (await n.health()).connections));
      assert.equal(counts[0] + counts[1], 3, `connections per instance ${counts}`);
    } finally {
      closeAll(poll, ws, legacyPoll);
    }
  });
});
