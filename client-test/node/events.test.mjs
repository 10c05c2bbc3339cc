// SPEC §4: events from clients (room:join, room:leave, ping, unknown events) with socket.io-client 4.x.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connect, closeAll, userToken, mintToken, uniqueUser, notify, emit, strayEvents, TRANSPORTS, TIMEOUT,
} from './herald.mjs';

let server;
before(async () => {
  server = await startHerald({ env: { HERALD__LIMITS__MAX_ROOMS_PER_SOCKET: '3' } });
});
after(async () => { closeAll(); await server?.stop(); });

const ack = (socket, event, ...args) => socket.timeout(TIMEOUT).emitWithAck(event, ...args);

for (const [name, transport] of Object.entries(TRANSPORTS)) {
  describe(`room policy (${name})`, () => {
    test('joinable names are accepted, exact ack, and the room then receives', async () => {
      const user = uniqueUser();
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(user) } });
      assert.deepEqual(await ack(socket, 'room:join', 'queue-updates'), { ok: true, room: 'queue-updates' });
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-41'), { ok: true, room: 'test-progress-41' });
      const r = await notify(server, { to: { room: 'test-progress-41' }, type: 'progress', message: '41%' });
      assert.equal(r.status, 202, r.text);
      const n = await inbox.next();
      assert.equal(n.channel, 'test-progress-41');
      assert.equal(n.message, '41%');
      socket.close();
    });

    test('object form {room} works for join and leave', async () => {
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(uniqueUser()) } });
      assert.deepEqual(await ack(socket, 'room:join', { room: 'system-alerts' }), { ok: true, room: 'system-alerts' });
      let r = await notify(server, { to: { room: 'system-alerts' }, type: 'alert', message: 'one' });
      assert.equal(r.status, 202);
      assert.equal((await inbox.next()).message, 'one');
      assert.deepEqual(await ack(socket, 'room:leave', { room: 'system-alerts' }), { ok: true, room: 'system-alerts' });
      r = await notify(server, { to: { room: 'system-alerts' }, type: 'alert', message: 'two' });
      assert.equal(r.status, 202);
      assert.deepEqual(await strayEvents(server, inbox, socket.id), [], 'left room still delivered');
      socket.close();
    });

    test('refusals: other user room, ungranted role/project, not joinable', async () => {
      const user = uniqueUser();
      const { socket } = await connect(server.url, {
        ...transport, auth: { token: mintToken({ user_id: user, role: 'dev', projects: ['p1'] }) },
      });
      // rooms the token grants are fine to name
      assert.deepEqual(await ack(socket, 'room:join', `user_${user}`), { ok: true, room: `user_${user}` });
      assert.deepEqual(await ack(socket, 'room:join', 'role_dev'), { ok: true, room: 'role_dev' });
      assert.deepEqual(await ack(socket, 'room:join', 'project_p1'), { ok: true, room: 'project_p1' });
      const notGranted = { ok: false, error: 'room not granted by your token' };
      assert.deepEqual(await ack(socket, 'room:join', `user_${user + 1}`), notGranted);
      assert.deepEqual(await ack(socket, 'room:join', 'role_admin'), notGranted);
      assert.deepEqual(await ack(socket, 'room:join', 'project_p2'), notGranted);
      assert.deepEqual(await ack(socket, 'room:join', { room: `user_${user + 1}` }), notGranted);
      const notJoinable = { ok: false, error: 'room not joinable' };
      assert.deepEqual(await ack(socket, 'room:join', 'random-room'), notJoinable);
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress'), notJoinable);
      assert.deepEqual(await ack(socket, 'room:join', 'xqueue-updates'), notJoinable);
      socket.close();
    });

    test('another user\'s room really is not joined after a refusal', async () => {
      const victim = uniqueUser();
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(uniqueUser()) } });
      assert.equal((await ack(socket, 'room:join', `user_${victim}`)).ok, false);
      const r = await notify(server, { to: { user: victim }, type: 'secret', message: 'for the victim' });
      assert.equal(r.status, 202);
      assert.deepEqual(await strayEvents(server, inbox, socket.id), []);
      socket.close();
    });

    test('per-socket room limit (3 here); token rooms do not count; rejoin is idempotent', async () => {
      const user = uniqueUser();
      const { socket } = await connect(server.url, { ...transport, auth: { token: userToken(user) } });
      for (const room of ['test-progress-1', 'test-progress-2', 'test-progress-3']) {
        assert.deepEqual(await ack(socket, 'room:join', room), { ok: true, room });
      }
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-4'),
        { ok: false, error: 'room limit reached (3 rooms per socket)' });
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-2'), { ok: true, room: 'test-progress-2' });
      assert.deepEqual(await ack(socket, 'room:join', `user_${user}`), { ok: true, room: `user_${user}` });
      assert.deepEqual(await ack(socket, 'room:leave', 'test-progress-1'), { ok: true, room: 'test-progress-1' });
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-4'), { ok: true, room: 'test-progress-4' });
      // another socket has its own budget
      const other = await connect(server.url, { ...transport, auth: { token: userToken(user) } });
      assert.deepEqual(await ack(other.socket, 'room:join', 'test-progress-9'), { ok: true, room: 'test-progress-9' });
      socket.close();
      other.socket.close();
    });

    test('malformed room:join payloads get an error ack and the connection survives', async () => {
      const user = uniqueUser();
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(user) } });
      const expectedName = { ok: false, error: 'expected a room name or {"room": "<name>"}' };
      const expectedObject = { ok: false, error: 'expected {"room": "<name>"}' };
      assert.deepEqual(await ack(socket, 'room:join', 42), expectedName);
      assert.deepEqual(await ack(socket, 'room:join', null), expectedName);
      assert.deepEqual(await ack(socket, 'room:join', ['queue-updates']), expectedName);
      assert.deepEqual(await ack(socket, 'room:join', true), expectedName);
      assert.deepEqual(await ack(socket, 'room:join'), expectedName, 'missing payload');
      assert.deepEqual(await ack(socket, 'room:join', {}), expectedObject);
      assert.deepEqual(await ack(socket, 'room:join', { room: 5 }), expectedObject);
      assert.deepEqual(await ack(socket, 'room:join', { name: 'queue-updates' }), expectedObject);
      assert.deepEqual(await ack(socket, 'room:join', ''), { ok: false, error: 'room name must be a non-empty string' });
      assert.deepEqual(await ack(socket, 'room:join', 'x'.repeat(10_000)), { ok: false, error: 'room name longer than 200 bytes' });
      assert.deepEqual(await ack(socket, 'room:join', `test-progress-${'é'.repeat(100)}`),
        { ok: false, error: 'room name longer than 200 bytes' }, 'the limit is in bytes');
      const control = { ok: false, error: 'room name contains control characters' };
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-\n1'), control);
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-\u0000'), control);
      assert.deepEqual(await ack(socket, 'room:join', 'test-progress-\u007f'), control);
      assert.deepEqual(await ack(socket, 'room:leave', 7), expectedName);
      assert.deepEqual(await ack(socket, 'room:leave', 'x'.repeat(10_000)), { ok: false, error: 'room name longer than 200 bytes' });
      assert.ok(socket.connected, 'still connected after malformed payloads');
      const r = await notify(server, { to: { user }, type: 'info', message: 'still here' });
      assert.equal(r.status, 202);
      assert.equal((await inbox.next()).message, 'still here');
      socket.close();
    });

    test('room:leave: token rooms cannot be left; leaving a room not joined is ok', async () => {
      const user = uniqueUser();
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: mintToken({ user_id: user, role: 'ops' }) } });
      const cannot = { ok: false, error: 'room granted by your token cannot be left' };
      assert.deepEqual(await ack(socket, 'room:leave', `user_${user}`), cannot);
      assert.deepEqual(await ack(socket, 'room:leave', 'role_ops'), cannot);
      assert.deepEqual(await ack(socket, 'room:leave', socket.id), cannot);
      assert.deepEqual(await ack(socket, 'room:leave', 'team-updates'), { ok: true, room: 'team-updates' });
      const r = await notify(server, { to: { user }, type: 'info', message: 'user room kept' });
      assert.equal(r.status, 202);
      assert.equal((await inbox.next()).message, 'user room kept');
      socket.close();
    });

    test('room:join without an ack callback is applied silently', async () => {
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(uniqueUser()) } });
      socket.emit('room:join', 'shared-tests');
      // a later acked event proves the first was handled (events of one socket are handled in order)
      assert.deepEqual(await ack(socket, 'room:join', 'team-updates'), { ok: true, room: 'team-updates' });
      const r = await notify(server, { to: { room: 'shared-tests' }, type: 'info', message: 'shared' });
      assert.equal(r.status, 202);
      assert.equal((await inbox.next()).message, 'shared');
      socket.close();
    });

    test('ping → pong event and ack with server_time', async () => {
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(uniqueUser()) } });
      inbox.watch('pong');
      const before = Date.now();
      const reply = await ack(socket, 'ping', { timestamp: 1234567 });
      const after = Date.now();
      assert.deepEqual(Object.keys(reply).sort(), ['server_time', 'timestamp', 'type']);
      assert.equal(reply.type, 'pong');
      assert.equal(reply.timestamp, 1234567);
      assert.ok(Number.isInteger(reply.server_time), 'server_time is integer ms');
      assert.ok(reply.server_time >= before - 60_000 && reply.server_time <= after + 60_000, 'server_time is epoch ms');
      const pong = await inbox.next('pong');
      assert.deepEqual(pong, reply);
      // without an ack: only the event
      socket.emit('ping', { timestamp: 99 });
      const pong2 = await inbox.next('pong');
      assert.equal(pong2.type, 'pong');
      assert.equal(pong2.timestamp, 99);
      // no payload at all: timestamp echoes as null
      const bare = await ack(socket, 'ping');
      assert.equal(bare.type, 'pong');
      assert.equal(bare.timestamp, null);
      assert.equal((await inbox.next('pong')).timestamp, null);
      // malformed ping
      assert.deepEqual(await ack(socket, 'ping', 'nope'), { ok: false, error: 'expected {"timestamp": <ms>}' });
      socket.close();
    });

    test('unknown events with an ack get {ok:false,error}', async () => {
      const { socket, inbox } = await connect(server.url, { ...transport, auth: { token: userToken(uniqueUser()) } });
      const reply = await ack(socket, 'totally:unknown', { a: 1 });
      assert.deepEqual(reply, { ok: false, error: 'unknown event' });
      assert.deepEqual(await ack(socket, 'x'.repeat(5000)), { ok: false, error: 'unknown event' });
      socket.emit('no-ack-unknown', 1, 2, 3); // must not break anything
      assert.deepEqual(await ack(socket, 'room:join', 'queue-updates'), { ok: true, room: 'queue-updates' });
      assert.ok(socket.connected);
      assert.deepEqual(await strayEvents(server, inbox, socket.id), []);
      socket.close();
    });
  });
}

describe('multi-tab', () => {
  test('two sockets of one user both get a notify to that user; another user does not', async () => {
    const user = uniqueUser();
    const tab1 = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(user) } });
    const tab2 = await connect(server.url, { query: { token: userToken(user) } });
    const other = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(uniqueUser()) } });
    const r = await notify(server, { to: { user }, type: 'info', message: 'both tabs' });
    assert.equal(r.status, 202);
    const [n1, n2] = await Promise.all([tab1.inbox.next(), tab2.inbox.next()]);
    assert.deepEqual(n1, n2);
    assert.equal(n1.id, r.body.id);
    assert.deepEqual(await strayEvents(server, other.inbox, other.socket.id), []);
    // exactly once per tab
    assert.deepEqual(await strayEvents(server, tab1.inbox, tab1.socket.id), []);
    assert.deepEqual(await strayEvents(server, tab2.inbox, tab2.socket.id), []);
    tab1.socket.close();
    tab2.socket.close();
    other.socket.close();
  });
});
