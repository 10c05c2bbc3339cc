// SPEC §2 (authentication) and §3 (on connect) with socket.io-client 4.x.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connect, connectRefused, closeAll, userToken, mintToken, algNoneToken, uniqueUser,
  notify, emit, strayEvents, ISO_UTC, TRANSPORTS, SECRET,
} from './herald.mjs';

let server;
before(async () => { server = await startHerald(); });
after(async () => { closeAll(); await server?.stop(); });

function assertWelcome(welcome, userId, sid) {
  assert.equal(typeof welcome, 'object');
  assert.deepEqual(Object.keys(welcome).sort(), ['data', 'message', 'timestamp', 'type']);
  assert.equal(welcome.type, 'welcome');
  assert.equal(welcome.message, 'connected');
  assert.match(welcome.timestamp, ISO_UTC);
  assert.ok(Math.abs(Date.parse(welcome.timestamp) - Date.now()) < 5 * 60_000, `timestamp ${welcome.timestamp} is not now`);
  assert.deepEqual(welcome.data, { user_id: userId, sid });
}

for (const [name, transport] of Object.entries(TRANSPORTS)) {
  describe(`auth carriers (${name})`, () => {
    test('auth: {token} connects and gets the welcome', async () => {
      const user = uniqueUser();
      const { socket, welcome } = await connect(server.url, { ...transport, auth: { token: userToken(user) } });
      assertWelcome(welcome, String(user), socket.id);
      socket.close();
    });

    test('query ?token= connects (Flask-SocketIO style)', async () => {
      const user = uniqueUser();
      const { socket, welcome } = await connect(server.url, { ...transport, query: { token: userToken(user) } });
      assertWelcome(welcome, String(user), socket.id);
      socket.close();
    });

    test('token in the URL itself (io("http://host/?token=..."))', async () => {
      const user = uniqueUser();
      const { socket, welcome } = await connect(`${server.url}/?token=${encodeURIComponent(userToken(user))}`, transport);
      assertWelcome(welcome, String(user), socket.id);
      socket.close();
    });

    test('Authorization: Bearer header (extraHeaders)', async () => {
      const user = uniqueUser();
      const { socket, welcome } = await connect(server.url, {
        ...transport,
        extraHeaders: { Authorization: `Bearer ${userToken(user)}` },
      });
      assertWelcome(welcome, String(user), socket.id);
      socket.close();
    });

    describe('refusals carry the exact SPEC §2 message', () => {
      const now = () => Math.floor(Date.now() / 1000);
      const cases = [
        ['no token at all', () => ({}), 'missing token'],
        ['empty auth.token', () => ({ auth: { token: '' } }), 'missing token'],
        ['garbage token', () => ({ auth: { token: 'not-a-jwt' } }), 'invalid token'],
        ['expired token', () => ({ auth: { token: mintToken({ user_id: 1, exp: now() - 120 }) } }), 'token expired'],
        ['expired token in the query', () => ({ query: { token: mintToken({ user_id: 1, exp: now() - 120 }) } }), 'token expired'],
        ['alg: none', () => ({ auth: { token: algNoneToken({ user_id: 1 }) } }), 'invalid token'],
        ['signed with another secret', () => ({ auth: { token: mintToken({ user_id: 1 }, { secret: `${SECRET}-wrong` }) } }), 'invalid token'],
        ['HS512 (not in auth.algorithms)', () => ({ auth: { token: mintToken({ user_id: 1 }, { algorithm: 'HS512' }) } }), 'invalid token'],
        ['no user claim (neither user_id nor sub)', () => ({ auth: { token: mintToken({ role: 'admin' }) } }), 'invalid token'],
        ['no exp claim', () => ({ auth: { token: mintToken({ user_id: 1, exp: null }) } }), 'invalid token'],
        ['nbf in the future', () => ({ auth: { token: mintToken({ user_id: 1, nbf: now() + 600 }) } }), 'invalid token'],
        ['user_id is an object', () => ({ auth: { token: mintToken({ user_id: { id: 1 } }) } }), 'invalid token'],
        ['tampered payload', () => {
          const [h, , s] = userToken(1).split('.');
          const p = Buffer.from(JSON.stringify({ user_id: 2, exp: now() + 3600 })).toString('base64url');
          return { auth: { token: `${h}.${p}.${s}` } };
        }, 'invalid token'],
        ['bad token in the query', () => ({ query: { token: 'x.y.z' } }), 'invalid token'],
        ['bad Bearer header', () => ({ extraHeaders: { Authorization: 'Bearer nope' } }), 'invalid token'],
      ];
      for (const [label, opts, message] of cases) {
        test(`${label} → "${message}"`, async () => {
          const err = await connectRefused(server.url, { ...transport, ...opts() });
          assert.equal(err.message, message);
        });
      }
    });
  });
}

describe('claims', () => {
  test('numeric user_id is rendered as a string; role and projects grant rooms', async () => {
    const user = uniqueUser();
    const token = mintToken({ user_id: user, role: 'qa', projects: [7, 'apollo'] });
    const { socket, inbox, welcome } = await connect(server.url, { transports: ['websocket'], auth: { token } });
    assert.equal(welcome.data.user_id, String(user));
    assert.equal(typeof welcome.data.user_id, 'string');
    for (const [to, channel] of [
      [{ user }, `user_${user}`],
      [{ role: 'qa' }, 'role_qa'],
      [{ project: 7 }, 'project_7'],
      [{ project: 'apollo' }, 'project_apollo'],
    ]) {
      const r = await notify(server, { to, type: 'info', message: `to ${channel}` });
      assert.equal(r.status, 202, r.text);
      const n = await inbox.next();
      assert.equal(n.channel, channel);
      assert.equal(n.message, `to ${channel}`);
    }
    socket.close();
  });

  test('fractional exp (RFC 7519 NumericDate; PyJWT with time.time()) is accepted', async () => {
    const user = uniqueUser();
    const token = mintToken({ user_id: user, exp: Date.now() / 1000 + 3600.25 });
    const { socket, welcome } = await connect(server.url, { transports: ['websocket'], auth: { token } });
    assert.equal(welcome.data.user_id, String(user));
    socket.close();
  });

  test('string user_id works and "sub" is the fallback claim', async () => {
    const a = await connect(server.url, { transports: ['websocket'], auth: { token: mintToken({ user_id: 'alice-x' }) } });
    assert.equal(a.welcome.data.user_id, 'alice-x');
    const b = await connect(server.url, { transports: ['websocket'], auth: { token: mintToken({ sub: 'bob-x' }) } });
    assert.equal(b.welcome.data.user_id, 'bob-x');
    const r = await notify(server, { to: { user: 'bob-x' }, type: 'info', message: 'for bob' });
    assert.equal(r.status, 202, r.text);
    assert.equal((await b.inbox.next()).message, 'for bob');
    assert.deepEqual(await strayEvents(server, a.inbox, a.socket.id), []);
    a.socket.close();
    b.socket.close();
  });

  test('own sid room: an emit to rooms:[sid] reaches only that socket', async () => {
    const user = uniqueUser();
    const a = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const b = await connect(server.url, { auth: { token: userToken(user) } });
    assert.notEqual(a.socket.id, b.socket.id);
    const r = await notify(server, { to: { room: a.socket.id }, type: 'direct', message: 'just a' });
    assert.equal(r.status, 202, r.text);
    const n = await a.inbox.next();
    assert.equal(n.message, 'just a');
    assert.equal(n.channel, a.socket.id);
    a.inbox.watch('direct'); // listen before emitting: the event may beat the HTTP response
    b.inbox.watch('direct');
    const r2 = await emit(server, { event: 'direct', args: [{ to: 'a' }], rooms: [a.socket.id] });
    assert.equal(r2.status, 202, r2.text);
    assert.deepEqual(await a.inbox.next('direct'), { to: 'a' });
    assert.deepEqual(await strayEvents(server, b.inbox, b.socket.id), []);
    assert.deepEqual(b.inbox.drain('direct'), []);
    a.socket.close();
    b.socket.close();
  });

  test('polling client upgrades to websocket and keeps receiving', async () => {
    const user = uniqueUser();
    const { socket, inbox } = await connect(server.url, { auth: { token: userToken(user) } });
    if (socket.io.engine.transport.name !== 'websocket') {
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no upgrade within 10 s')), 10_000);
        socket.io.engine.once('upgrade', () => { clearTimeout(t); resolve(); });
      });
    }
    assert.equal(socket.io.engine.transport.name, 'websocket');
    const r = await notify(server, { to: { user }, type: 'info', message: 'after upgrade' });
    assert.equal(r.status, 202);
    assert.equal((await inbox.next()).message, 'after upgrade');
    socket.close();
  });
});
