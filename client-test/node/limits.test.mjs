// SPEC §1/§2/§8: configurable limits and anonymous mode, seen from socket.io-client 4.x.
// Every limit here is set low through HERALD__LIMITS__* so that exceeding it is deterministic.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  serversForThisFile, connect, connectRefused, userToken, uniqueUser, notify, strayEvents, getJson, TIMEOUT,
} from './herald.mjs';

const server = serversForThisFile();

describe('auth.required = false (anonymous)', () => {
  test('anonymous sockets connect, join no user room, still get broadcasts', async () => {
    const s = await server({ HERALD__AUTH__REQUIRED: 'false' });
    const anon = await connect(s.url, { transports: ['websocket'] });
    assert.equal(anon.welcome.type, 'welcome');
    assert.equal(anon.welcome.message, 'connected');
    assert.equal(anon.welcome.data.sid, anon.socket.id);
    assert.equal(anon.welcome.data.user_id, null, 'an anonymous socket has no user id');
    // a token, when presented, is still verified and grants its rooms
    const user = uniqueUser();
    const named = await connect(s.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    assert.equal(named.welcome.data.user_id, String(user));
    const bad = await connectRefused(s.url, { transports: ['websocket'], auth: { token: 'garbage' } });
    assert.equal(bad.message, 'invalid token');
    for (const to of [{ user: 'null' }, { user: 'undefined' }, { user: 'anonymous' }, { user }]) {
      const r = await notify(s, { to, type: 'info', message: JSON.stringify(to) });
      assert.equal(r.status, 202);
    }
    assert.deepEqual(await strayEvents(s, anon.inbox, anon.socket.id), [], 'anonymous socket is in a user room');
    assert.equal((await named.inbox.next()).channel, `user_${user}`);
    const b = await notify(s, { to: { broadcast: true }, type: 'all', message: 'everyone' });
    assert.equal(b.status, 202);
    assert.equal((await anon.inbox.next()).message, 'everyone');
    assert.deepEqual(await (async () => { const e = await anon.socket.timeout(TIMEOUT).emitWithAck('room:join', 'user_1'); return e; })(),
      { ok: false, error: 'room not granted by your token' });
  });
});

describe('connection limits (SPEC §2 refusal messages)', () => {
  test('limits.max_connections_per_user → "too many connections"', async () => {
    const s = await server({ HERALD__LIMITS__MAX_CONNECTIONS_PER_USER: '2' });
    const user = uniqueUser();
    const a = await connect(s.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    await connect(s.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const err = await connectRefused(s.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    assert.equal(err.message, 'too many connections');
    // another user is not affected
    await connect(s.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    // a slot frees up when a socket leaves
    a.socket.close();
    const deadline = Date.now() + TIMEOUT;
    let last;
    while (Date.now() < deadline) {
      try {
        await connect(s.url, { transports: ['websocket'], auth: { token: userToken(user) } });
        last = null;
        break;
      } catch (e) {
        last = e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    assert.equal(last, null, `no slot after a disconnect: ${last?.message}`);
  });

  test('limits.max_connections → "server full"', async () => {
    const s = await server({ HERALD__LIMITS__MAX_CONNECTIONS: '2' });
    await connect(s.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    await connect(s.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const err = await connectRefused(s.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    assert.equal(err.message, 'server full');
    const h = await getJson(s, '/health');
    assert.equal(h.body.connections, 2);
  });

  test('limits.connects_per_ip_per_minute → "rate limited"', async () => {
    const s = await server({ HERALD__LIMITS__CONNECTS_PER_IP_PER_MINUTE: '3' });
    for (let i = 0; i < 3; i++) {
      const c = await connect(s.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
      c.socket.close();
    }
    const err = await connectRefused(s.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    assert.equal(err.message, 'rate limited');
  });
});

describe('limits.events_per_second', () => {
  test('a burst beyond the bucket gets error acks, the socket stays connected', async () => {
    const s = await server({ HERALD__LIMITS__EVENTS_PER_SECOND: '1' }); // bucket of 2
    const user = uniqueUser();
    const { socket, inbox } = await connect(s.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const replies = await Promise.all(
      Array.from({ length: 12 }, (_, i) => socket.timeout(TIMEOUT).emitWithAck('room:join', `test-progress-${i}`)),
    );
    const refused = replies.filter((r) => r.ok === false);
    assert.ok(refused.length >= 12 - 4, `12 events at once with a bucket of 2: ${JSON.stringify(replies)}`);
    for (const r of refused) assert.equal(typeof r.error, 'string');
    assert.ok(socket.connected);
    const r = await notify(s, { to: { user }, type: 'info', message: 'still served' });
    assert.equal(r.status, 202);
    assert.equal((await inbox.next()).message, 'still served');
  });
});
