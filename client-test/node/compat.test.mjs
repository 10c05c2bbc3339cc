// Drop-in details a Flask-SocketIO deployment relies on: CORS, lenient backend requests, big
// payloads, delivery during the polling→websocket upgrade, 2.x string queries.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import {
  startHerald, connect, closeAll, userToken, uniqueUser, notify, post, strayEvents, Inbox, TIMEOUT, API_KEY,
} from './herald.mjs';

const require = createRequire(import.meta.url);
const io2 = require('socket.io-client-v2');

let server;
before(async () => { server = await startHerald(); });
after(async () => { closeAll(); await server?.stop(); });

describe('delivery', () => {
  test('notifications sent while polling upgrades to websocket arrive once each, in order', async () => {
    const user = uniqueUser();
    const { socket, inbox } = await connect(server.url, { auth: { token: userToken(user) } });
    const sent = [];
    for (let i = 0; i < 30; i++) {
      const r = await notify(server, { to: { user }, type: 'seq', message: `n${i}` });
      assert.equal(r.status, 202);
      sent.push(r.body.id);
    }
    const got = [];
    for (let i = 0; i < 30; i++) got.push((await inbox.next()).id);
    assert.deepEqual(got, sent);
    assert.deepEqual(await strayEvents(server, inbox, socket.id), []);
    socket.close();
  });

  for (const transports of [['websocket'], ['polling']]) {
    test(`a 300 kB notification reaches a ${transports[0]} client intact`, async () => {
      const user = uniqueUser();
      const { socket, inbox } = await connect(server.url, { transports, auth: { token: userToken(user) } });
      const blob = 'é✓x'.repeat(100_000);
      const r = await notify(server, { to: { user }, type: 'big', message: 'big one', data: { blob } });
      assert.equal(r.status, 202, r.text);
      const n = await inbox.next();
      assert.equal(n.data.blob.length, blob.length);
      assert.equal(n.data.blob, blob);
      socket.close();
    });
  }

  test('unicode room names and messages round-trip', async () => {
    const { socket, inbox } = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const room = 'test-progress-日本語-é';
    assert.deepEqual(await socket.timeout(TIMEOUT).emitWithAck('room:join', room), { ok: true, room });
    const r = await notify(server, { to: { room }, type: 'info', message: 'ünïcødé 🚀', data: { emoji: '👍' } });
    assert.equal(r.status, 202, r.text);
    const n = await inbox.next();
    assert.equal(n.channel, room);
    assert.equal(n.message, 'ünïcødé 🚀');
    assert.deepEqual(n.data, { emoji: '👍' });
    socket.close();
  });
});

describe('backend requests the Flask service accepted', () => {
  test('JSON body without a JSON content type (requests.post(data=json.dumps(...)))', async () => {
    const user = uniqueUser();
    const { socket, inbox } = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const body = JSON.stringify({ to: { user }, type: 'info', message: 'text/plain body' });
    for (const ct of ['text/plain', 'application/x-www-form-urlencoded', undefined]) {
      const headers = { authorization: `Bearer ${API_KEY}` };
      if (ct) headers['content-type'] = ct;
      const res = await fetch(`${server.url}/api/v1/notify`, { method: 'POST', headers, body });
      assert.equal(res.status, 202, `content-type ${ct}: ${await res.text()}`);
      assert.equal((await inbox.next()).message, 'text/plain body');
    }
    socket.close();
  });

  test('unknown API routes → 404; GET on an API route is refused', async () => {
    const r = await post(server, '/api/v1/nope', { a: 1 });
    assert.equal(r.status, 404);
    const g = await fetch(`${server.url}/api/v1/notify`);
    assert.ok([401, 405].includes(g.status), `GET /api/v1/notify → ${g.status}`);
  });
});

describe('CORS (server.cors_origins)', () => {
  test('"*" (default) allows any origin on polling requests, without credentials', async () => {
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: 'http://app.example' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    assert.equal(res.headers.get('access-control-allow-credentials'), null);
    const pre = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      method: 'OPTIONS',
      headers: { origin: 'http://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' },
    });
    assert.ok(pre.status === 200 || pre.status === 204, `preflight → ${pre.status}`);
    assert.equal(pre.headers.get('access-control-allow-origin'), '*');
    assert.equal(pre.headers.get('access-control-allow-credentials'), null);
  });

  test('a configured list allows only those origins', async () => {
    const own = await startHerald({ env: { HERALD__SERVER__CORS_ORIGINS: 'http://good.example,http://also.example' } });
    try {
      const good = await fetch(`${own.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: 'http://also.example' } });
      assert.equal(good.headers.get('access-control-allow-origin'), 'http://also.example');
      assert.equal(good.headers.get('access-control-allow-credentials'), 'true');
      const evil = await fetch(`${own.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: 'http://evil.example' } });
      assert.equal(evil.headers.get('access-control-allow-origin'), null);
    } finally {
      await own.stop();
    }
  });
});

describe('socket.io-client 2.x, Flask-era options', () => {
  test('query as a string ("token=...") and the default transports', async () => {
    const user = uniqueUser();
    const socket = io2(server.url, { query: `token=${userToken(user)}`, forceNew: true, reconnection: false, autoConnect: false });
    const inbox = new Inbox(socket, ['notification']);
    try {
      socket.open();
      const welcome = await inbox.next();
      assert.deepEqual(welcome.data, { user_id: String(user), sid: socket.id });
      const r = await notify(server, { to: { user }, type: 'info', message: 'string query' });
      assert.equal(r.status, 202);
      assert.equal((await inbox.next()).message, 'string query');
    } finally {
      socket.close();
    }
  });
});
