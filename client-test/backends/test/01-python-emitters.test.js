// 1. python-socketio / Flask-SocketIO message queue (JSON era and pickle era) → 3 Herald
//    instances → real socket.io-client 4.x sockets on different instances, each exactly once.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uid } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, expectNone, notif, ev, toBuffer, QUIET_MS } from '../lib/client.js';
import { PyEmitter, GENERATIONS, bytes, tuple } from '../lib/python.js';

let cluster;
before(async () => { cluster = await startCluster(3); });
after(async () => { await cluster?.stop(); });

const MODES = [
  { mode: 'flask', label: 'SocketIO(message_queue=url), no app', disconnect: true },
  { mode: 'redis', label: 'RedisManager(url, write_only=True)', disconnect: false },
  { mode: 'async', label: 'AsyncRedisManager(url, write_only=True)', disconnect: false },
];

for (const gen of GENERATIONS) {
  for (const m of MODES) {
    describe(`python ${gen.label} via ${m.label}`, () => {
      let py; let a; let b; let c; let chat; const tag = `${gen.venv}-${m.mode}`;
      const mk = (s) => `${tag}-${s}`;
      before(async () => {
        const [A, B, C] = cluster.nodes;
        py = await PyEmitter.start(gen.venv, m.mode, cluster.redis.url);
        const [u1, u2, u3] = [uid('py'), uid('py'), uid('py')];
        [a, b, c, chat] = await Promise.all([
          connect(A.url, u1, { label: `u1@A` }),
          connect(B.url, u2, { label: `u2@B` }),
          connect(C.url, u3, { label: `u3@C` }),
          connect(C.url, u1, { namespace: '/chat', label: `u1/chat@C` }),
        ]);
        Object.assign(a, { user: u1 }); Object.assign(b, { user: u2 }); Object.assign(c, { user: u3 });
      });
      after(() => { py?.stop(); closeAll(a, b, c, chat); });

      it('emits to user_<id>, to a sid, broadcast, room list with skip_sid, tuple, binary, /chat', async () => {
        await py.emit('notification', [{ type: 'info', message: 'to user room', marker: mk('user') }], { to: `user_${a.user}` });
        await py.emit('notification', [{ type: 'info', message: 'to sid', marker: mk('sid') }], { to: b.sid });
        await py.emit('announce', [{ marker: mk('bcast') }]);
        await py.emit('multi-room', [{ marker: mk('rooms') }], { to: [`user_${a.user}`, a.sid, `user_${b.user}`, `user_${c.user}`], skip_sid: b.sid });
        await py.emit('multi', [tuple(1, 'two', { three: 3, marker: mk('tuple') })], { to: `user_${c.user}` });
        await py.emit('bin', [bytes([0, 1, 2, 255])], { to: a.sid });
        await py.emit('file', [{ name: 'a.bin', blob: bytes([0xde, 0xad, 0xbe, 0xef]), marker: mk('file') }], { to: `user_${b.user}` });
        await py.emit('msg', [{ marker: mk('chat') }], { namespace: '/chat' });

        const [userNote] = await expectExactlyOnce(a.col, [
          { pred: notif(mk('user')), what: 'notification to user room' },
          { pred: ev('announce', mk('bcast')), what: 'broadcast' },
          { pred: ev('multi-room', mk('rooms')), what: 'room list (socket in 2 of the rooms)' },
          { pred: (e) => e.event === 'bin', what: 'binary' },
        ]);
        assert.ok(userNote.args[0].id, `stored notification carries an id: ${JSON.stringify(userNote.args[0])}`);
        assert.equal(userNote.args[0].message, 'to user room');
        const bin = a.col.matching((e) => e.event === 'bin')[0];
        assert.equal(bin.args.length, 1);
        assert.deepEqual([...toBuffer(bin.args[0])], [0, 1, 2, 255]);

        const [, , file] = await expectExactlyOnce(b.col, [
          { pred: notif(mk('sid')), what: 'notification to sid' },
          { pred: ev('announce', mk('bcast')), what: 'broadcast' },
          { pred: ev('file', mk('file')), what: 'nested binary' },
        ], { quiet: 0 });
        assert.deepEqual([...toBuffer(file.args[0].blob)], [0xde, 0xad, 0xbe, 0xef]);
        assert.equal(file.args[0].name, 'a.bin');
        assert.equal(b.col.matching(ev('multi-room', mk('rooms'))).length, 0, 'skip_sid socket got the room-list emit');

        const [, , multi] = await expectExactlyOnce(c.col, [
          { pred: ev('announce', mk('bcast')), what: 'broadcast' },
          { pred: ev('multi-room', mk('rooms')), what: 'room list' },
          { pred: (e) => e.event === 'multi' && e.args[2]?.marker === mk('tuple'), what: 'tuple' },
        ], { quiet: 0 });
        assert.deepEqual(multi.args, [1, 'two', { three: 3, marker: mk('tuple') }]);

        await expectExactlyOnce(chat.col, [{ pred: ev('msg', mk('chat')), what: '/chat emit' }], { quiet: 0 });
        assert.equal(chat.col.matching(ev('announce')).length, 0, '/ broadcast leaked into /chat');
        for (const x of [b, c]) assert.equal(x.col.matching(notif(mk('user'))).length, 0, `${x.col.label} got u1's notification`);
        for (const x of [a, c]) assert.equal(x.col.matching(notif(mk('sid'))).length, 0, `${x.col.label} got b's sid emit`);
        for (const x of [a, b, c]) assert.equal(x.col.matching(ev('msg')).length, 0, `${x.col.label} got the /chat emit on /`);
      });

      it('enter_room / leave_room move the real socket in and out of a room', async () => {
        const room = mk('room');
        await py.op({ op: 'enter_room', sid: b.sid, room, namespace: '/' });
        await py.op({ op: 'enter_room', sid: chat.sid, room, namespace: '/chat' });
        await py.emit('in-room', [{ marker: mk('r1') }], { to: room });
        await py.emit('in-room', [{ marker: mk('r1chat') }], { to: room, namespace: '/chat' });
        await expectExactlyOnce(b.col, [{ pred: ev('in-room', mk('r1')), what: 'emit after enter_room' }]);
        await expectExactlyOnce(chat.col, [{ pred: ev('in-room', mk('r1chat')), what: '/chat emit after enter_room' }], { quiet: 0 });
        for (const x of [a, c]) assert.equal(x.col.matching(ev('in-room')).length, 0);

        await py.op({ op: 'leave_room', sid: b.sid, room, namespace: '/' });
        await py.op({ op: 'leave_room', sid: chat.sid, room, namespace: '/chat' });
        await py.emit('in-room', [{ marker: mk('r2') }], { to: room });
        await py.emit('in-room', [{ marker: mk('r2chat') }], { to: room, namespace: '/chat' });
        await expectNone(b.col, ev('in-room', mk('r2')), { what: 'emit after leave_room' });
        await expectNone(chat.col, ev('in-room', mk('r2chat')), { quiet: 0, what: '/chat emit after leave_room' });
      });

      it('close_room empties the room on every instance', async () => {
        const room = mk('closing');
        for (const x of [a, b, c]) await py.op({ op: 'enter_room', sid: x.sid, room, namespace: '/' });
        await py.emit('closing', [{ marker: mk('c1') }], { to: room });
        for (const x of [a, b, c]) await expectExactlyOnce(x.col, [{ pred: ev('closing', mk('c1')), what: 'emit before close_room' }], { quiet: x === a ? QUIET_MS : 0 });
        await py.op({ op: 'close_room', room, namespace: '/' });
        await py.emit('closing', [{ marker: mk('c2') }], { to: room });
        await expectNone(a.col, ev('closing', mk('c2')), { what: 'emit after close_room' });
        for (const x of [b, c]) assert.equal(x.col.matching(ev('closing', mk('c2'))).length, 0, `${x.col.label} still in closed room`);
      });

      if (m.disconnect) {
        it('disconnect(sid) disconnects the real socket, and only it', async () => {
          const t0 = Date.now();
          await py.op({ op: 'disconnect', sid: c.sid, namespace: '/' });
          const d = await c.col.waitLifecycle('disconnect', { after: t0 });
          assert.equal(d.reason, 'io server disconnect');
          await expectNone(a.col, () => false, { quiet: 300 });
          assert.ok(a.socket.connected && b.socket.connected && chat.socket.connected, 'other sockets stayed connected');
        });
      }
    });
  }
}
