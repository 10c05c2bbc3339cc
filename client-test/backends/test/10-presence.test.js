// 10. Presence and webhooks across 3 real instances, with real socket.io-client sockets and a real
//     webhook receiver (Python, verifying each call with the README's recipe):
//     - tabs on two instances, one closed, one reload, then the instance holding the last tab
//       killed -9: the HTTP answers and the webhook transitions at each step;
//     - presence rooms: presence:join / presence:leave / presence:list, and the HTTP room list;
//     - bulk lookup of 1,000 ids;
//     - notification.missed: one call per batch for a burst spread over 3 instances, nothing for
//       online users; retries after two 500s; a bounded queue while the receiver is down;
//     - device targeting: one user on two devices.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import { startCluster, uid, token, waitUntil, freePort, spawnLogged, stopProcess, Herald, HERE, REPO, RUN_DIR } from '../lib/cluster.js';
import { Collector, connect, closeAll } from '../lib/client.js';

const SECRET = 'whsec-test';
const GRACE_SECS = 2;

class Receiver {
  static async start() {
    const r = new Receiver();
    r.port = await freePort();
    r.url = `http://127.0.0.1:${r.port}`;
    r.proc = spawnLogged(`webhook-receiver-${r.port}`, join(HERE, '.venv-json', 'bin', 'python'),
      [join(HERE, 'py', 'webhook_receiver.py'), '--port', String(r.port), '--secret', SECRET, '--readme', join(REPO, 'README.md')]);
    await waitUntil(async () => (await fetch(`${r.url}/events`)).ok, { what: 'webhook receiver' });
    return r;
  }
  async events() { return (await fetch(`${this.url}/events`)).json(); }
  async control(body) { await fetch(`${this.url}/control`, { method: 'POST', body: JSON.stringify(body) }); }
  async stop() { await stopProcess(this.proc); }
  /** The calls about `user` (of `type` when given). */
  async about(user, type) {
    return (await this.events()).filter((e) => e.body?.data?.user === user && (!type || e.body.type === type));
  }
}

async function presenceOf(node, user) {
  const r = await node.api('GET', `/api/v1/presence/users/${user}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

function ack(socket, event, body) {
  return new Promise((ok) => socket.emit(event, body, ok));
}

let cluster; let receiver;
before(async () => {
  receiver = await Receiver.start();
  cluster = await startCluster(3, {
    env: {
      HERALD__PRESENCE__GRACE_SECS: String(GRACE_SECS),
      HERALD__PRESENCE__ROOMS: 'team-*',
      HERALD__ROOMS__JOINABLE: 'team-*,queue-updates',
      HERALD__WEBHOOKS__URLS: `${receiver.url}/hook`,
      HERALD__WEBHOOKS__SECRET: SECRET,
      HERALD__WEBHOOKS__BATCH_WINDOW_MS: '2500',
    },
  });
});
after(async () => { await cluster?.stop(); await receiver?.stop(); });

describe('presence across instances', () => {
  it('is online while any tab is, a reload is not an offline/online pair, a killed instance takes its users offline', async () => {
    const [A, B, C] = cluster.nodes;
    const user = uid('pr');
    const tab1 = await connect(A.url, user, { label: 'tab1@A' });
    const tab2 = await connect(B.url, user, { label: 'tab2@B' });
    for (const node of cluster.nodes) {
      const p = await presenceOf(node, user);
      assert.equal(p.online, true); assert.equal(p.sockets, 2, `from ${node.name}: ${JSON.stringify(p)}`);
      assert.ok(p.since, 'since when');
    }
    await waitUntil(async () => (await receiver.about(user, 'user.online')).length === 1, { what: 'user.online webhook' });

    // one tab closed: still online, one socket
    tab1.socket.disconnect();
    await waitUntil(async () => (await presenceOf(C, user)).sockets === 1, { what: 'one socket left' });
    assert.equal((await presenceOf(C, user)).online, true);

    // a reload of the other tab, landing on C: no offline, no second online
    tab2.socket.disconnect();
    const reloaded = await connect(C.url, user, { label: 'reloaded@C' });
    await sleep(GRACE_SECS * 1000 + 1500);
    assert.equal((await presenceOf(A, user)).online, true);
    assert.equal((await receiver.about(user, 'user.offline')).length, 0, 'no offline for a reload');
    assert.equal((await receiver.about(user, 'user.online')).length, 1, 'no second online for a reload');

    // the instance holding the last tab dies
    const killedAt = Date.now();
    await C.kill9();
    try {
      await waitUntil(async () => (await presenceOf(A, user)).online === false, { timeout: 15000, interval: 200, what: 'offline after kill -9' });
    const seconds = (Date.now() - killedAt) / 1000;
    console.log(`presence: offline ${seconds.toFixed(1)} s after kill -9 of its instance (grace ${GRACE_SECS} s)`);
    assert.ok(seconds <= GRACE_SECS + 4, `within grace + a few seconds: ${seconds}`);
    await waitUntil(async () => (await receiver.about(user, 'user.offline')).length === 1, { what: 'user.offline webhook' });
    await sleep(1000);
    assert.equal((await receiver.about(user, 'user.offline')).length, 1, 'once, not once per instance');
      const calls = await receiver.about(user);
      assert.ok(calls.every((c) => c.verified), 'every call verifies with the README recipe');
    } finally {
      closeAll(reloaded);
      await C.start(); // back for the next tests
    }
  });

  it('presence rooms: join, list and leave events, and the HTTP room list', async () => {
    const [A, B] = cluster.nodes;
    const room = `team-${uid('r')}`;
    const vUser = uid('pv'); const wUser = uid('pw');
    const v = await connect(A.url, vUser, { label: 'v@A' });
    const w = await connect(B.url, wUser, { label: 'w@B' });
    assert.deepEqual(await ack(v.socket, 'room:join', { room }), { ok: true, room });
    assert.deepEqual(await ack(w.socket, 'room:join', { room }), { ok: true, room });
    await v.col.waitFor((e) => e.event === 'presence:join' && e.args[0]?.user === wUser && e.args[0]?.room === room, { what: 'v sees w join' });
    const list = await ack(v.socket, 'presence:list', { room });
    assert.equal(list.ok, true); assert.equal(list.count, 2);
    assert.deepEqual([...list.users].sort(), [vUser, wUser].sort());
    const notMember = await ack(w.socket, 'presence:list', { room: 'team-elsewhere' });
    assert.equal(notMember.ok, false);
    const http = await A.api('GET', `/api/v1/presence/rooms/${room}`);
    assert.equal(http.status, 200); assert.equal(http.body.count, 2);
    assert.equal((await A.api('GET', '/api/v1/presence/rooms/queue-updates')).status, 404, 'no presence there');
    assert.deepEqual(await ack(w.socket, 'room:leave', { room }), { ok: true, room });
    await v.col.waitFor((e) => e.event === 'presence:leave' && e.args[0]?.user === wUser, { timeout: (GRACE_SECS + 5) * 1000, what: 'v sees w leave' });
    assert.equal(v.col.events.filter((e) => e.event === 'presence:leave').length, 1, 'one leave event');
    assert.equal((await A.api('GET', `/api/v1/presence/rooms/${room}`)).body.count, 1);
    closeAll(v, w);
  });

  it('bulk lookup of 1,000 ids in one call', async () => {
    const [A, B, C] = cluster.nodes;
    const online = [uid('bulk'), uid('bulk'), uid('bulk')];
    const clients = await Promise.all(online.map((u, i) => connect(cluster.nodes[i].url, u)));
    const ids = Array.from({ length: 997 }, (_, i) => `nobody-${i}`).concat(online);
    const r = await B.api('POST', '/api/v1/presence/users', { users: ids });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.count, 3);
    assert.deepEqual([...r.body.online].sort(), [...online].sort());
    assert.equal(r.body.offline.length, 997);
    assert.equal((await C.api('POST', '/api/v1/presence/users', { users: 'x' })).status, 400);
    void A;
    closeAll(clients);
  });
});

describe('webhooks', () => {
  it('notification.missed: one call for a burst spread over 3 instances, nothing for an online user', async () => {
    const away = uid('away'); const here = uid('here');
    const present = await connect(cluster.nodes[0].url, here);
    for (let i = 0; i < 20; i++) {
      await cluster.nodes[i % 3].notify({ to: { user: away }, type: 'grade', message: `missed ${i}` });
      await cluster.nodes[i % 3].notify({ to: { user: here }, type: 'grade', message: `seen ${i}` });
    }
    await waitUntil(async () => (await receiver.about(away, 'notification.missed')).length >= 1, { timeout: 10000, what: 'missed webhook' });
    await sleep(3500); // past another batch window
    const calls = (await receiver.about(away, 'notification.missed')).filter((c) => c.answered === 200);
    assert.equal(calls.length, 1, `one call: ${JSON.stringify(calls.map((c) => c.body.data.notifications.length))}`);
    const items = calls[0].body.data.notifications;
    assert.equal(items.length, 20);
    assert.deepEqual(items.map((n) => n.notification.message).sort(), Array.from({ length: 20 }, (_, i) => `missed ${i}`).sort());
    assert.ok(items.every((n) => n.reason === 'offline' && n.notification.id), 'each with its reason and id');
    assert.ok(calls[0].verified, 'signature verified with the README recipe');
    assert.equal((await receiver.about(here, 'notification.missed')).length, 0, 'nothing for an online user');
    closeAll(present);
  });

  it('retries after the receiver answers 500 twice, with the same event id', async () => {
    await receiver.control({ fail_next: 2 });
    const user = uid('retry');
    const c = await connect(cluster.nodes[1].url, user);
    await waitUntil(async () => (await receiver.about(user, 'user.online')).some((e) => e.answered === 200), { timeout: 15000, what: 'delivered after retries' });
    const attempts = await receiver.about(user, 'user.online');
    assert.deepEqual(attempts.map((a) => a.answered), [500, 500, 200]);
    assert.equal(new Set(attempts.map((a) => a.event_id)).size, 1, 'one event id');
    closeAll(c);
  });

  it('a receiver that is down costs a bounded queue, and the drops are counted', async () => {
    const deadPort = await freePort();
    const node = new Herald({
      name: 'solo', port: await freePort(), redisUrl: '',
      env: {
        HERALD__WEBHOOKS__URLS: `http://127.0.0.1:${deadPort}/hook`, HERALD__WEBHOOKS__SECRET: SECRET,
        HERALD__WEBHOOKS__MAX_QUEUE: '5', HERALD__WEBHOOKS__MAX_ATTEMPTS: '20',
      },
    });
    await node.start();
    try {
      const clients = [];
      for (let i = 0; i < 20; i++) clients.push(await connect(node.url, uid('down')));
      const metric = async (name) => {
        const text = await (await fetch(`${node.url}/metrics`)).text();
        const line = text.split('\n').find((l) => l.startsWith(name));
        return line ? Number(line.split(' ').pop()) : 0;
      };
      await waitUntil(async () => (await metric('herald_webhook_calls_total{outcome="dropped_queue_full"}')) >= 15, { what: 'drops counted' });
      assert.ok((await metric('herald_webhook_queue')) <= 5, 'the queue stays bounded');
      closeAll(clients);
    } finally { await node.stop(); }
  });
});

describe('devices', () => {
  it('one user on two devices: notify to a device reaches only its sockets', async () => {
    const user = uid('dev');
    const web = await connect(cluster.nodes[0].url, user, { tokenIn: 'auth', opts: { auth: { token: token(user), device: 'web' } }, label: 'web' });
    const mobile = await connect(cluster.nodes[1].url, user, { claims: { device: 'mobile' }, label: 'mobile' });
    const p = await presenceOf(cluster.nodes[2], user);
    assert.deepEqual(p.devices, { web: 1, mobile: 1 });
    await cluster.nodes[2].notify({ to: { user, device: 'mobile' }, type: 'push', message: 'only mobile', data: { marker: 'm1' } });
    await mobile.col.waitFor((e) => e.event === 'notification' && e.args[0]?.message === 'only mobile', { what: 'mobile gets it' });
    await cluster.nodes[2].notify({ to: { user }, type: 'push', message: 'everyone', data: { marker: 'm2' } });
    await web.col.waitFor((e) => e.event === 'notification' && e.args[0]?.message === 'everyone', { what: 'web gets the user one' });
    await mobile.col.waitFor((e) => e.event === 'notification' && e.args[0]?.message === 'everyone', { what: 'mobile gets the user one' });
    await sleep(500);
    assert.equal(web.col.events.filter((e) => e.args[0]?.message === 'only mobile').length, 0, 'web never gets the mobile one');
    assert.equal(mobile.col.events.filter((e) => e.args[0]?.message === 'only mobile').length, 1, 'mobile once');
    const bad = await cluster.nodes[0].api('POST', '/api/v1/notify', { to: { user, device: 'no spaces' }, type: 't', message: 'm' });
    assert.equal(bad.status, 400);

    // stored and replayed like the user room: a mobile socket that comes back with last_id
    const lastId = mobile.col.events.filter((e) => e.event === 'notification' && e.args[0]?.id).at(-1).args[0].id;
    mobile.socket.disconnect();
    await cluster.nodes[0].notify({ to: { user, device: 'mobile' }, type: 'push', message: 'while away' });
    const back = io(cluster.nodes[2].url, { forceNew: true, reconnection: false, transports: ['websocket'], auth: { token: token(user, { device: 'mobile' }), last_id: lastId } });
    const col = new Collector(back, 'mobile-back');
    await col.waitFor((e) => e.event === 'notification' && e.args[0]?.message === 'while away', { what: 'replayed to the device' });
    closeAll(web, back);
  });
});
