// SPEC §5/§6: the HTTP API (POST /api/v1/notify, /api/v1/emit) seen from socket.io-client 4.x,
// and §8 /health, /ready.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connect, closeAll, userToken, mintToken, uniqueUser, notify, emit, post, getJson,
  strayEvents, ISO_UTC, TIMEOUT, API_KEY,
} from './herald.mjs';

let server;
before(async () => {
  server = await startHerald({ env: { HERALD__SOCKETIO__NAMESPACES: '/,/admin', HERALD__API__KEYS: `${API_KEY},second-key` } });
});
after(async () => { closeAll(); await server?.stop(); });

const ack = (socket, event, ...args) => socket.timeout(TIMEOUT).emitWithAck(event, ...args);

function assertEnvelope(n, { id, type, message, data, priority, channel }) {
  assert.deepEqual(Object.keys(n).sort(), ['channel', 'data', 'id', 'message', 'priority', 'timestamp', 'type']);
  assert.equal(n.id, id);
  assert.equal(n.type, type);
  assert.equal(n.message, message);
  assert.deepEqual(n.data, data);
  assert.match(n.timestamp, ISO_UTC);
  assert.ok(Math.abs(Date.parse(n.timestamp) - Date.now()) < 5 * 60_000);
  if (priority === undefined) assert.ok(Number.isInteger(n.priority) && n.priority >= 1 && n.priority <= 4, `priority ${n.priority}`);
  else assert.equal(n.priority, priority);
  assert.equal(n.channel, channel);
}

describe('POST /api/v1/notify', () => {
  test('to.user: full envelope, 202 {id}', async () => {
    const user = uniqueUser();
    const { inbox, socket } = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const data = { test_id: 17, nested: { list: [1, 'two', null, true], f: 1.5 }, unicode: 'héllo ✓' };
    const r = await notify(server, { to: { user }, type: 'test_completed', message: 'Test 17 passed', data, priority: 3 });
    assert.equal(r.status, 202, r.text);
    assert.deepEqual(Object.keys(r.body), ['id']);
    assert.equal(typeof r.body.id, 'string');
    assert.ok(r.body.id.length > 0);
    assertEnvelope(await inbox.next(), { id: r.body.id, type: 'test_completed', message: 'Test 17 passed', data, priority: 3, channel: `user_${user}` });
    socket.close();
  });

  test('to.user as a string id; data defaults to {}; priority defaults within 1..4', async () => {
    const user = uniqueUser();
    const { inbox, socket } = await connect(server.url, { auth: { token: userToken(String(user)) } });
    const r = await notify(server, { to: { user: String(user) }, type: 'info', message: 'hi' });
    assert.equal(r.status, 202, r.text);
    assertEnvelope(await inbox.next(), { id: r.body.id, type: 'info', message: 'hi', data: {}, channel: `user_${user}` });
    socket.close();
  });

  test('ids of successive notifications differ and sort in order', async () => {
    const user = uniqueUser();
    const { inbox, socket } = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const ids = [];
    for (let i = 0; i < 5; i++) {
      const r = await notify(server, { to: { user }, type: 'seq', message: `m${i}` });
      assert.equal(r.status, 202);
      ids.push(r.body.id);
    }
    for (let i = 0; i < 5; i++) {
      const n = await inbox.next();
      assert.equal(n.message, `m${i}`, 'in order');
      assert.equal(n.id, ids[i]);
    }
    assert.equal(new Set(ids).size, 5);
    socket.close();
  });

  test('to.users reaches each listed user once, with its own channel', async () => {
    const [u1, u2, u3] = [uniqueUser(), uniqueUser(), uniqueUser()];
    const a = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(u1) } });
    const b = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(u2) } });
    const c = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(u3) } });
    const r = await notify(server, { to: { users: [u1, String(u2)] }, type: 'batch', message: 'two of three', priority: 1 });
    assert.equal(r.status, 202, r.text);
    assertEnvelope(await a.inbox.next(), { id: r.body.id, type: 'batch', message: 'two of three', data: {}, priority: 1, channel: `user_${u1}` });
    assertEnvelope(await b.inbox.next(), { id: r.body.id, type: 'batch', message: 'two of three', data: {}, priority: 1, channel: `user_${u2}` });
    assert.deepEqual(await strayEvents(server, c.inbox, c.socket.id), []);
    assert.deepEqual(await strayEvents(server, a.inbox, a.socket.id), [], 'exactly once');
    for (const s of [a, b, c]) s.socket.close();
  });

  test('to.users naming one user twice (42 and "42") still delivers once (SPEC §6 exactly once)', async () => {
    const user = uniqueUser();
    const { socket, inbox } = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const r = await notify(server, { to: { users: [user, String(user), user] }, type: 'dup', message: 'only once' });
    if (r.status === 202) {
      assert.equal((await inbox.next()).message, 'only once');
      const extra = await strayEvents(server, inbox, socket.id);
      assert.equal(extra.length, 0, `the same notification arrived ${extra.length + 1} times`);
    } else {
      assert.equal(r.status, 400, r.text); // refusing duplicates would also keep exactly-once
    }
    socket.close();
  });

  test('to.role and to.project', async () => {
    const staff = await connect(server.url, { transports: ['websocket'], auth: { token: mintToken({ user_id: uniqueUser(), role: 'staff', projects: ['x9'] }) } });
    const guest = await connect(server.url, { transports: ['websocket'], auth: { token: mintToken({ user_id: uniqueUser(), role: 'guest' }) } });
    let r = await notify(server, { to: { role: 'staff' }, type: 'role', message: 'staff only', priority: 4 });
    assert.equal(r.status, 202, r.text);
    assertEnvelope(await staff.inbox.next(), { id: r.body.id, type: 'role', message: 'staff only', data: {}, priority: 4, channel: 'role_staff' });
    r = await notify(server, { to: { project: 'x9' }, type: 'proj', message: 'project x9', data: { k: 'v' } });
    assert.equal(r.status, 202, r.text);
    assertEnvelope(await staff.inbox.next(), { id: r.body.id, type: 'proj', message: 'project x9', data: { k: 'v' }, channel: 'project_x9' });
    assert.deepEqual(await strayEvents(server, guest.inbox, guest.socket.id), []);
    staff.socket.close();
    guest.socket.close();
  });

  test('to.room reaches members of a joined room only', async () => {
    const member = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const outsider = await connect(server.url, { auth: { token: userToken(uniqueUser()) } });
    assert.deepEqual(await ack(member.socket, 'room:join', 'test-progress-77'), { ok: true, room: 'test-progress-77' });
    const r = await notify(server, { to: { room: 'test-progress-77' }, type: 'progress', message: '77', data: { pct: 77 } });
    assert.equal(r.status, 202, r.text);
    assertEnvelope(await member.inbox.next(), { id: r.body.id, type: 'progress', message: '77', data: { pct: 77 }, channel: 'test-progress-77' });
    assert.deepEqual(await strayEvents(server, outsider.inbox, outsider.socket.id), []);
    member.socket.close();
    outsider.socket.close();
  });

  test('to.broadcast reaches everyone in the namespace', async () => {
    const a = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const b = await connect(server.url, { auth: { token: userToken(uniqueUser()) } });
    const r = await notify(server, { to: { broadcast: true }, type: 'maintenance', message: 'down at 5', priority: 4 });
    assert.equal(r.status, 202, r.text);
    for (const s of [a, b]) {
      const n = await s.inbox.next();
      assert.equal(n.id, r.body.id);
      assert.equal(n.type, 'maintenance');
      assert.equal(n.message, 'down at 5');
      assert.equal(n.priority, 4);
      assert.equal(typeof n.channel, 'string');
    }
    a.socket.close();
    b.socket.close();
  });

  describe('refusals', () => {
    const good = () => ({ to: { user: 1 }, type: 'info', message: 'x' });

    test('401 without a key, with a bad key, with a non-Bearer scheme', async () => {
      for (const opts of [{ key: null }, { key: 'wrong-key' }, { key: '' }, { key: null, headers: { authorization: `Basic ${API_KEY}` } }]) {
        const r = await notify(server, good(), opts);
        assert.equal(r.status, 401, JSON.stringify(opts));
        assert.equal(typeof r.body?.error, 'string', r.text);
        assert.ok(r.body.error.length > 0);
        const e = await emit(server, { event: 'x', args: [] }, opts);
        assert.equal(e.status, 401);
      }
    });

    test('any configured key works', async () => {
      const r = await notify(server, good(), { key: 'second-key' });
      assert.equal(r.status, 202, r.text);
    });

    const bad = [
      ['not JSON', '{"to":', /JSON/i],
      ['a JSON array', '[1,2]', /object/i],
      ['a JSON string', '"hello"', /object/i],
      ['empty body', '', /JSON/i],
    ];
    for (const [label, raw, reason] of bad) {
      test(`400 for ${label}`, async () => {
        const r = await notify(server, raw, { raw: true });
        assert.equal(r.status, 400, r.text);
        assert.match(r.body?.error ?? '', reason);
      });
    }

    const badBodies = [
      ['missing to', { type: 'info', message: 'x' }, /\bto\b/],
      ['to is a string', { to: 'user_1', type: 'info', message: 'x' }, /\bto\b/],
      ['unknown to key', { to: { group: 'x' }, type: 'info', message: 'x' }, /\bto\b/],
      ['two to keys', { to: { user: 1, role: 'x' }, type: 'info', message: 'x' }, /\bto\b/],
      ['to.user is an object', { to: { user: {} }, type: 'info', message: 'x' }, /to\.user/],
      ['to.user is empty', { to: { user: '' }, type: 'info', message: 'x' }, /to\.user/],
      ['to.users empty list', { to: { users: [] }, type: 'info', message: 'x' }, /to\.users/],
      ['to.users has an object', { to: { users: [1, {}] }, type: 'info', message: 'x' }, /to\.users/],
      ['to.broadcast false', { to: { broadcast: false }, type: 'info', message: 'x' }, /broadcast/],
      ['missing type', { to: { user: 1 }, message: 'x' }, /type/],
      ['type is a number', { to: { user: 1 }, type: 5, message: 'x' }, /type/],
      ['message is a number', { to: { user: 1 }, type: 'info', message: 5 }, /message/],
      ['message is null', { to: { user: 1 }, type: 'info', message: null }, /message/],
      ['priority 9', { ...good(), priority: 9 }, /priority/],
      ['priority 0', { ...good(), priority: 0 }, /priority/],
      ['priority "high"', { ...good(), priority: 'high' }, /priority/],
      ['priority 2.5', { ...good(), priority: 2.5 }, /priority/],
      ['namespace not served', { ...good(), namespace: '/nope' }, /namespace/],
    ];
    for (const [label, body, reason] of badBodies) {
      test(`400 with a reason: ${label}`, async () => {
        const r = await notify(server, body);
        assert.equal(r.status, 400, r.text);
        assert.deepEqual(Object.keys(r.body ?? {}), ['error']);
        assert.match(r.body.error, reason);
      });
    }
  });
});

describe('POST /api/v1/emit', () => {
  test('several args arrive as several arguments, unchanged', async () => {
    const { socket, inbox } = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    inbox.watch('job:update');
    const args = [{ job: 5, state: 'running' }, 'second', 3, [1, 2, { x: null }], null, true];
    const r = await emit(server, { event: 'job:update', args, rooms: [socket.id] });
    assert.equal(r.status, 202, r.text);
    assert.deepEqual(await inbox.nextArgs('job:update'), args);
    // no args at all
    const r2 = await emit(server, { event: 'job:update', rooms: [socket.id] });
    assert.equal(r2.status, 202, r2.text);
    assert.deepEqual(await inbox.nextArgs('job:update'), []);
    socket.close();
  });

  test('rooms + except', async () => {
    const a = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const b = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const c = await connect(server.url, { auth: { token: userToken(uniqueUser()) } });
    for (const s of [a, b]) {
      assert.deepEqual(await ack(s.socket, 'room:join', 'queue-updates'), { ok: true, room: 'queue-updates' });
      s.inbox.watch('queue');
    }
    c.inbox.watch('queue');
    const r = await emit(server, { event: 'queue', args: [{ depth: 3 }], rooms: ['queue-updates'], except: [b.socket.id] });
    assert.equal(r.status, 202, r.text);
    assert.deepEqual(await a.inbox.nextArgs('queue'), [{ depth: 3 }]);
    await strayEvents(server, b.inbox, b.socket.id);
    assert.deepEqual(b.inbox.drain('queue'), [], 'excepted socket got it');
    await strayEvents(server, c.inbox, c.socket.id);
    assert.deepEqual(c.inbox.drain('queue'), [], 'non-member got it');
    // several rooms: a socket in two of them gets it once
    assert.deepEqual(await ack(a.socket, 'room:join', 'team-updates'), { ok: true, room: 'team-updates' });
    const r2 = await emit(server, { event: 'queue', args: ['once'], rooms: ['queue-updates', 'team-updates'] });
    assert.equal(r2.status, 202);
    assert.deepEqual(await a.inbox.nextArgs('queue'), ['once']);
    await strayEvents(server, a.inbox, a.socket.id);
    assert.deepEqual(a.inbox.drain('queue'), [], 'duplicate delivery');
    for (const s of [a, b, c]) s.socket.close();
  });

  test('no rooms = the whole namespace', async () => {
    const a = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const b = await connect(server.url, { auth: { token: userToken(uniqueUser()) } });
    for (const s of [a, b]) s.inbox.watch('everyone');
    const r = await emit(server, { event: 'everyone', args: ['hi'] });
    assert.equal(r.status, 202, r.text);
    for (const s of [a, b]) assert.deepEqual(await s.inbox.nextArgs('everyone'), ['hi']);
    a.socket.close();
    b.socket.close();
  });

  test('another namespace (/admin): auth, welcome, emit reaches only /admin', async () => {
    const user = uniqueUser();
    const token = userToken(user);
    const admin = await connect(`${server.url}/admin`, { transports: ['websocket'], auth: { token } });
    assert.equal(admin.welcome.type, 'welcome');
    assert.deepEqual(admin.welcome.data, { user_id: String(user), sid: admin.socket.id });
    const root = await connect(server.url, { transports: ['websocket'], auth: { token } });
    for (const s of [admin, root]) s.inbox.watch('audit');
    const r = await emit(server, { event: 'audit', args: [{ who: user }], rooms: [`user_${user}`], namespace: '/admin' });
    assert.equal(r.status, 202, r.text);
    assert.deepEqual(await admin.inbox.nextArgs('audit'), [{ who: user }]);
    await strayEvents(server, root.inbox, root.socket.id);
    assert.deepEqual(root.inbox.drain('audit'), [], '/ socket got an /admin emit');
    // /admin refuses like / does
    await assert.rejects(
      connect(`${server.url}/admin`, { transports: ['websocket'] }),
      (err) => err.message === 'missing token',
    );
    // events work on /admin too
    assert.deepEqual(await ack(admin.socket, 'room:join', 'queue-updates'), { ok: true, room: 'queue-updates' });
    // notify to the namespace
    const n = await notify(server, { to: { user }, type: 'info', message: 'admin ns', namespace: '/admin' });
    assert.equal(n.status, 202, n.text);
    assert.equal((await admin.inbox.next()).message, 'admin ns');
    assert.deepEqual(await strayEvents(server, root.inbox, root.socket.id), []);
    admin.socket.close();
    root.socket.close();
  });

  const badEmits = [
    ['missing event', { args: [] }, /event/],
    ['empty event', { event: '', args: [] }, /event/],
    ['event is a number', { event: 5 }, /event/],
    ['reserved event connect', { event: 'connect' }, /reserved/],
    ['reserved event disconnect', { event: 'disconnect' }, /reserved/],
    ['args not a list', { event: 'x', args: { a: 1 } }, /args/],
    ['rooms not a list', { event: 'x', rooms: 'queue-updates' }, /rooms/],
    ['except with a number', { event: 'x', except: [5] }, /except/],
    ['namespace not served', { event: 'x', namespace: '/nope' }, /namespace/],
  ];
  for (const [label, body, reason] of badEmits) {
    test(`400 with a reason: ${label}`, async () => {
      const r = await emit(server, body);
      assert.equal(r.status, 400, r.text);
      assert.match(r.body?.error ?? '', reason);
    });
  }

  test('400 for a body that is not JSON', async () => {
    const r = await post(server, '/api/v1/emit', 'nope', { raw: true });
    assert.equal(r.status, 400);
    assert.match(r.body?.error ?? '', /JSON/);
  });
});

describe('/health and /ready', () => {
  test('/health JSON shape and connection count', async () => {
    const own = await startHerald({ env: { HERALD__SERVER__NODE_ID: 'node-under-test' } });
    try {
      let h = await getJson(own, '/health');
      assert.equal(h.status, 200);
      assert.match(h.headers.get('content-type') ?? '', /application\/json/);
      assert.deepEqual(Object.keys(h.body).sort(), ['connections', 'node_id', 'redis', 'status', 'transports', 'uptime_secs']);
      assert.deepEqual(h.body.transports, { socketio: 0, websocket: 0 });
      assert.equal(h.body.status, 'ok');
      assert.equal(h.body.node_id, 'node-under-test');
      assert.equal(h.body.redis, 'disabled');
      assert.equal(h.body.connections, 0);
      assert.ok(Number.isInteger(h.body.uptime_secs) && h.body.uptime_secs >= 0);
      const a = await connect(own.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
      const b = await connect(own.url, { auth: { token: userToken(uniqueUser()) } });
      h = await getJson(own, '/health');
      assert.equal(h.body.connections, 2);
      assert.deepEqual(h.body.transports, { socketio: 2, websocket: 0 });
      a.socket.close();
      b.socket.close();
      const deadline = Date.now() + TIMEOUT;
      while ((h = await getJson(own, '/health')).body.connections !== 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(h.body.connections, 0, 'closed sockets are no longer counted');
    } finally {
      await own.stop();
    }
  });

  test('/ready is 200 JSON while serving', async () => {
    const r = await getJson(server, '/ready');
    assert.equal(r.status, 200);
    assert.equal(typeof r.body, 'object');
  });

  test('SIGTERM: connected clients are told, the process exits 0', async () => {
    const own = await startHerald();
    const { socket } = await connect(own.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const disconnected = new Promise((resolve) => socket.once('disconnect', resolve));
    const exit = await own.stop();
    const reason = await disconnected;
    assert.deepEqual(exit, { code: 0, signal: null }, own.logs());
    assert.ok(['io server disconnect', 'transport close'].includes(reason), reason);
  });
});
