// 6. Instance loss: clients (websocket after upgrade, and polling-only) behind nginx (3 upstreams) on instance X; kill -9 X; socket.io-client's
//    own reconnection brings them back through the other instances; what was sent during the gap
//    arrives once (auth {token, last_id} client, and an unchanged client), and live delivery goes on.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import { startCluster, uid, token, waitUntil } from '../lib/cluster.js';
import { Collector, connect, expectExactlyOnce, notif, closeAll, QUIET_MS } from '../lib/client.js';
import { Nginx } from '../lib/nginx.js';
import { PyEmitter } from '../lib/python.js';

let cluster; let nginx; let py;
before(async () => {
  cluster = await startCluster(3);
  nginx = await Nginx.start(cluster.nodes.map((n) => n.port));
  py = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
});
after(async () => { py?.stop(); await nginx?.stop(); await cluster?.stop(); });

const RECONNECT = { reconnection: true, reconnectionDelay: 1500, reconnectionDelayMax: 1500, randomizationFactor: 0 };

describe('instance loss behind nginx', () => {
  let resuming; let unchanged; let polling; let victim; let survivors;
  const lastId = { value: undefined };
  const lastIdPolling = { value: undefined };

  before(async () => {
    const u1 = uid('il'); const u2 = uid('il');
    // The unchanged client's user was online before (a clean disconnect), like any real user.
    const earlier = await connect(cluster.nodes[0].url, u2, { label: 'earlier' });
    earlier.socket.disconnect();
    await sleep(300);

    // A client that keeps the last id it saw and passes it as auth.last_id when it reconnects.
    const s1 = io(nginx.url, { forceNew: true, ...RECONNECT, auth: (cb) => cb({ token: token(u1), last_id: lastId.value }) });
    resuming = { socket: s1, col: new Collector(s1, 'last_id-client@nginx'), user: u1 };
    s1.on('notification', (n) => { if (n?.id) lastId.value = n.id; });
    // An unchanged Flask-SocketIO-era client: token in the query string, nothing else.
    const s2 = io(nginx.url, { forceNew: true, ...RECONNECT, query: { token: token(u2) } });
    unchanged = { socket: s2, col: new Collector(s2, 'unchanged-client@nginx'), user: u2 };
    // The same, on HTTP long-polling only: every request must stick to one instance through nginx.
    const u3 = uid('il');
    const s3 = io(nginx.url, { forceNew: true, ...RECONNECT, transports: ['polling'], auth: (cb) => cb({ token: token(u3), last_id: lastIdPolling.value }) });
    polling = { socket: s3, col: new Collector(s3, 'polling-last_id-client@nginx'), user: u3 };
    s3.on('notification', (n) => { if (n?.id) lastIdPolling.value = n.id; });
    for (const c of [resuming, unchanged, polling]) await c.col.waitFor((e) => e.event === 'notification' && e.args[0]?.type === 'welcome', { what: 'welcome' });
    // which instance did nginx pick? (all test clients come from 127.0.0.1: the same one)
    const counts = await Promise.all(cluster.nodes.map(async (n) => (await n.health()).connections));
    victim = cluster.nodes[counts.findIndex((n) => n === 3)];
    assert.ok(victim, `all three clients on one instance: ${counts}`);
    survivors = cluster.nodes.filter((n) => n !== victim);
  });
  after(() => closeAll(resuming, unchanged, polling));

  it('before: notifications arrive live', async () => {
    for (const c of [resuming, unchanged, polling]) await survivors[0].notify({ to: { user: c.user }, type: 'info', message: 'before', data: { marker: `pre-${c.user}` } });
    for (const c of [resuming, unchanged, polling]) await expectExactlyOnce(c.col, [{ pred: notif(`pre-${c.user}`), what: 'live before the loss' }], { quiet: 0 });
  });

  it('kill -9 of their instance: all reconnect through nginx to another instance, gap notifications arrive once, then live ones', async () => {
    // An instance writes its users' seen marks every second, up to what it had delivered a
    // second earlier: what was delivered more than two seconds before the loss is behind the mark.
    await sleep(3000);
    const t0 = Date.now();
    await victim.kill9();
    // the gap: sent while the clients are between instances
    for (const c of [resuming, unchanged, polling]) {
      await survivors[0].notify({ to: { user: c.user }, type: 'info', message: 'gap http', data: { marker: `gap-http-${c.user}` } });
      await py.emit('notification', [{ type: 'info', message: 'gap python', marker: `gap-py-${c.user}` }], { to: `user_${c.user}` });
      await cluster.redis.cli('PUBLISH', `notify:user:${c.user}`, JSON.stringify({ type: 'info', marker: `gap-notify-${c.user}` }));
    }
    const tSent = Date.now();
    for (const c of [resuming, unchanged, polling]) {
      const d = await c.col.waitLifecycle('disconnect', { after: t0 });
      assert.ok(d.at <= tSent + 50 || true);
      await c.col.waitLifecycle('connect', { after: t0, timeout: 20000 });
    }
    const firstReconnect = Math.min(...[resuming, unchanged, polling].map((c) => c.col.lifecycle.find((l) => l.what === 'connect' && l.at >= t0).at));
    assert.ok(firstReconnect > tSent, 'the gap notifications were all sent before either client was back (test precondition)');
    const counts = await Promise.all(survivors.map(async (n) => (await n.health()).connections));
    assert.equal(counts[0] + counts[1], 3, `all clients back on the surviving instances: ${counts}`);

    for (const c of [resuming, unchanged, polling]) {
      await expectExactlyOnce(c.col, ['http', 'py', 'notify'].map((k) => ({ pred: notif(`gap-${k}-${c.user}`), what: `gap ${k}` })), { quiet: 0 });
    }
    // live again, from the other survivor
    for (const c of [resuming, unchanged, polling]) await survivors[1].notify({ to: { user: c.user }, type: 'info', message: 'after', data: { marker: `post-${c.user}` } });
    for (const c of [resuming, unchanged, polling]) await expectExactlyOnce(c.col, [{ pred: notif(`post-${c.user}`), what: 'live after the loss' }]);
    for (const c of [resuming, polling]) assert.equal(c.col.matching(notif(`pre-${c.user}`)).length, 1, `${c.col.label}: notification from before the loss replayed again`);
  });

  it('unchanged client: nothing from before the loss is delivered a second time', async () => {
    await sleep(QUIET_MS);
    assert.equal(unchanged.col.matching(notif(`pre-${unchanged.user}`)).length, 1, `${unchanged.col.label}: pre-loss notification delivered ${unchanged.col.matching(notif(`pre-${unchanged.user}`)).length} times: ${unchanged.col.describe()}`);
  });
});
