// socket.io-client 2.x (Socket.IO protocol v4 / Engine.IO v3), the client many Flask-SocketIO
// front ends still ship. Herald enables socketioxide's protocol-v4 feature for them.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import {
  startHerald, userToken, mintToken, uniqueUser, notify, emit, Inbox, ISO_UTC, TIMEOUT,
} from './herald.mjs';

const require = createRequire(import.meta.url);
const io2 = require('socket.io-client-v2');
const v2version = require('socket.io-client-v2/package.json').version;

let server;
const sockets = new Set();
before(async () => {
  assert.match(v2version, /^2\./, 'the npm alias must resolve to socket.io-client 2.x');
  server = await startHerald({ env: { HERALD__SOCKETIO__NAMESPACES: '/,/admin' } });
});
after(async () => {
  for (const s of sockets) s.close();
  await server?.stop();
});

/** Opens a 2.x socket; resolves {socket, inbox, welcome} or rejects with the refusal. */
function connect2(url, opts) {
  const socket = io2(url, { forceNew: true, reconnection: false, timeout: TIMEOUT, autoConnect: false, ...opts });
  sockets.add(socket);
  const inbox = new Inbox(socket, ['notification']);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('2.x: no connect within timeout')), TIMEOUT);
    socket.once('connect', async () => {
      clearTimeout(t);
      try {
        resolve({ socket, inbox, welcome: await inbox.next() });
      } catch (e) { reject(e); }
    });
    // 2.x reports a middleware refusal as an `error` event carrying the packet's data
    socket.once('error', (err) => { clearTimeout(t); socket.close(); reject(Object.assign(new Error(err?.message ?? String(err)), { data: err })); });
    socket.once('connect_error', (err) => { clearTimeout(t); socket.close(); reject(err); });
    socket.open();
  });
}

function ack2(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ack for ${event}`)), TIMEOUT);
    socket.emit(event, ...args, (reply) => { clearTimeout(t); resolve(reply); });
  });
}

const variants = {
  websocket: { transports: ['websocket'] },
  polling: { transports: ['polling'] },
  'polling→websocket': {},
};

for (const [name, transport] of Object.entries(variants)) {
  describe(`socket.io-client ${v2version} (${name})`, () => {
    test('connects with ?token= and receives the welcome', async () => {
      const user = uniqueUser();
      const { socket, welcome } = await connect2(server.url, { ...transport, query: { token: userToken(user) } });
      assert.equal(welcome.type, 'welcome');
      assert.equal(welcome.message, 'connected');
      assert.match(welcome.timestamp, ISO_UTC);
      assert.deepEqual(welcome.data, { user_id: String(user), sid: socket.id });
      if (name === 'polling') assert.equal(socket.io.engine.transport.name, 'polling');
      socket.close();
    });

    test('receives an API notification and a multi-argument emit', async () => {
      const user = uniqueUser();
      const { socket, inbox } = await connect2(server.url, { ...transport, query: { token: userToken(user) } });
      const r = await notify(server, { to: { user }, type: 'test_completed', message: 'v2 ok', data: { n: 1 }, priority: 2 });
      assert.equal(r.status, 202, r.text);
      const n = await inbox.next();
      assert.deepEqual(
        { ...n, timestamp: undefined },
        { id: r.body.id, type: 'test_completed', message: 'v2 ok', data: { n: 1 }, priority: 2, channel: `user_${user}`, timestamp: undefined },
      );
      inbox.watch('multi');
      const e = await emit(server, { event: 'multi', args: [1, 'two', { three: 3 }], rooms: [`user_${user}`] });
      assert.equal(e.status, 202, e.text);
      assert.deepEqual(await inbox.nextArgs('multi'), [1, 'two', { three: 3 }]);
      socket.close();
    });

    test('room:join with ack, then the room receives', async () => {
      const { socket, inbox } = await connect2(server.url, { ...transport, query: { token: userToken(uniqueUser()) } });
      assert.deepEqual(await ack2(socket, 'room:join', 'test-progress-2x'), { ok: true, room: 'test-progress-2x' });
      assert.deepEqual(await ack2(socket, 'room:join', { room: 'user_1' }), { ok: false, error: 'room not granted by your token' });
      assert.deepEqual(await ack2(socket, 'room:join', 'nope'), { ok: false, error: 'room not joinable' });
      const r = await notify(server, { to: { room: 'test-progress-2x' }, type: 'progress', message: 'half' });
      assert.equal(r.status, 202);
      assert.equal((await inbox.next()).message, 'half');
      assert.deepEqual(await ack2(socket, 'room:leave', 'test-progress-2x'), { ok: true, room: 'test-progress-2x' });
      assert.deepEqual(await ack2(socket, 'mystery'), { ok: false, error: 'unknown event' });
      socket.close();
    });

    test('refusals reach the 2.x client with the exact message', async () => {
      const now = Math.floor(Date.now() / 1000);
      for (const [query, message] of [
        [{}, 'missing token'],
        [{ token: 'garbage' }, 'invalid token'],
        [{ token: mintToken({ user_id: 1, exp: now - 100 }) }, 'token expired'],
      ]) {
        await assert.rejects(connect2(server.url, { ...transport, query }), (err) => {
          assert.equal(err.message, message);
          return true;
        });
      }
    });
  });
}

// socket.io-client 2.x appends the socket's query to the namespace of its CONNECT packet
// (`40/admin?token=...,`), as protocol v4 specifies; the server must strip it and answer `40/admin,`.
test('protocol v4 raw: CONNECT to /admin carrying ?token= in the packet is accepted', async () => {
  const { default: WebSocket } = await import('ws');
  const token = userToken(uniqueUser());
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=3&transport=websocket&token=${token}`);
  const frames = [];
  const seen = (pred) => new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`frames so far: ${JSON.stringify(frames)}`)), TIMEOUT);
    const check = () => { const f = frames.find(pred); if (f) { clearTimeout(t); resolve(f); } else setTimeout(check, 20); };
    check();
  });
  ws.on('message', (d) => frames.push(d.toString()));
  await new Promise((r) => ws.once('open', r));
  await seen((f) => f === '40'); // protocol v4: "/" is connected implicitly
  ws.send(`40/admin?token=${token},`);
  const reply = await seen((f) => f.startsWith('40/admin') || f.startsWith('44/admin'));
  ws.terminate();
  assert.equal(reply, '40/admin,', `server answered ${reply}`);
});

test('socket.io-client 2.x on another namespace (/admin) with ?token=', async () => {
  const user = uniqueUser();
  const { socket, welcome, inbox } = await connect2(`${server.url}/admin`, { transports: ['websocket'], query: { token: userToken(user) } });
  assert.equal(welcome.data.user_id, String(user));
  const r = await notify(server, { to: { user }, type: 'info', message: 'admin v2', namespace: '/admin' });
  assert.equal(r.status, 202, r.text);
  assert.equal((await inbox.next()).message, 'admin v2');
  socket.close();
});
