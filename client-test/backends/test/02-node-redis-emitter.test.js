// 2. Node backends: @socket.io/redis-emitter 5.x over node-redis 4.x (as its README documents)
//    → 3 Herald instances → socket.io-client sockets on different instances, exactly once.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from 'redis';
import { Emitter } from '@socket.io/redis-emitter';
import { startCluster, uid } from '../lib/cluster.js';
import { connect, closeAll, expectExactlyOnce, expectNone, notif, ev, toBuffer } from '../lib/client.js';

let cluster; let redisClient; let emitter;
let a; let b; let c; let chat;
before(async () => {
  cluster = await startCluster(3);
  redisClient = createClient({ url: cluster.redis.url });
  await redisClient.connect();
  emitter = new Emitter(redisClient);
  const [A, B, C] = cluster.nodes;
  const [u1, u2, u3] = [uid('nd'), uid('nd'), uid('nd')];
  [a, b, c, chat] = await Promise.all([
    connect(A.url, u1, { label: 'u1@A' }),
    connect(B.url, u2, { label: 'u2@B', tokenIn: 'auth' }),
    connect(C.url, u3, { label: 'u3@C' }),
    connect(B.url, u1, { namespace: '/chat', label: 'u1/chat@B' }),
  ]);
  a.user = u1; b.user = u2; c.user = u3;
});
after(async () => {
  closeAll(a, b, c, chat);
  await redisClient?.quit().catch(() => {});
  await cluster?.stop();
});

describe('@socket.io/redis-emitter', () => {
  it('to(room).emit, except, several args, binary, of("/chat"), volatile', async () => {
    emitter.to(`user_${a.user}`).emit('notification', { type: 'info', message: 'node', marker: 'n-user' });
    emitter.to([`user_${a.user}`, a.sid, `user_${b.user}`, `user_${c.user}`]).except(`user_${b.user}`).emit('ex', { marker: 'n-except' });
    emitter.to(`user_${c.user}`).emit('multi', 1, 'two', { three: 3, marker: 'n-multi' });
    emitter.to(a.sid).emit('bin', Buffer.from([0, 1, 2, 255]));
    emitter.to(b.sid).emit('file', { name: 'a.bin', blob: Buffer.from([0xde, 0xad, 0xbe, 0xef]), marker: 'n-file' });
    emitter.of('/chat').emit('msg', { marker: 'n-chat' });
    emitter.volatile.emit('tick', { marker: 'n-volatile' });
    emitter.of('/chat').to(`user_${a.user}`).volatile.compress(true).emit('v', { marker: 'n-chat-vol' });

    const [note] = await expectExactlyOnce(a.col, [
      { pred: notif('n-user'), what: 'to(user room) notification' },
      { pred: ev('ex', 'n-except'), what: 'to(rooms).except (socket in 2 of the rooms)' },
      { pred: (e) => e.event === 'bin', what: 'binary' },
      { pred: ev('tick', 'n-volatile'), what: 'volatile broadcast' },
    ]);
    assert.ok(note.args[0].id, `stored notification carries an id: ${JSON.stringify(note.args[0])}`);
    assert.deepEqual([...toBuffer(a.col.matching((e) => e.event === 'bin')[0].args[0])], [0, 1, 2, 255]);

    const [file] = await expectExactlyOnce(b.col, [
      { pred: ev('file', 'n-file'), what: 'nested binary to sid' },
      { pred: ev('tick', 'n-volatile'), what: 'volatile broadcast' },
    ], { quiet: 0 });
    assert.deepEqual([...toBuffer(file.args[0].blob)], [0xde, 0xad, 0xbe, 0xef]);
    assert.equal(b.col.matching(ev('ex')).length, 0, 'except()ed socket got the emit');

    const [, multi] = await expectExactlyOnce(c.col, [
      { pred: ev('ex', 'n-except'), what: 'except: other room' },
      { pred: (e) => e.event === 'multi', what: 'several args' },
      { pred: ev('tick', 'n-volatile'), what: 'volatile broadcast' },
    ], { quiet: 0 });
    assert.deepEqual(multi.args, [1, 'two', { three: 3, marker: 'n-multi' }]);

    await expectExactlyOnce(chat.col, [
      { pred: ev('msg', 'n-chat'), what: 'of(/chat) emit' },
      { pred: ev('v', 'n-chat-vol'), what: 'of(/chat).to(room).volatile.compress' },
    ], { quiet: 0 });
    assert.equal(chat.col.matching(ev('tick')).length, 0, '/ broadcast leaked into /chat');
    for (const x of [a, b, c]) assert.equal(x.col.matching(ev('msg')).length + x.col.matching(ev('v')).length, 0, `${x.col.label} got a /chat emit`);
    for (const x of [b, c]) assert.equal(x.col.matching(notif('n-user')).length, 0);
  });

  it('socketsJoin / socketsLeave act on the real sockets of every instance', async () => {
    emitter.in([`user_${a.user}`, `user_${c.user}`]).socketsJoin(['node-room', 'node-room-2']);
    emitter.of('/chat').in(chat.sid).socketsJoin('node-room');
    emitter.to('node-room').emit('joined', { marker: 'j1' });
    emitter.of('/chat').to('node-room').emit('joined', { marker: 'j1chat' });
    await expectExactlyOnce(a.col, [{ pred: ev('joined', 'j1'), what: 'emit after socketsJoin' }]);
    await expectExactlyOnce(c.col, [{ pred: ev('joined', 'j1'), what: 'emit after socketsJoin' }], { quiet: 0 });
    await expectExactlyOnce(chat.col, [{ pred: ev('joined', 'j1chat'), what: '/chat emit after socketsJoin' }], { quiet: 0 });
    assert.equal(b.col.matching(ev('joined')).length, 0);

    emitter.in('node-room').except(`user_${c.user}`).socketsLeave('node-room');
    emitter.to('node-room').emit('joined', { marker: 'j2' });
    emitter.to('node-room-2').emit('joined', { marker: 'j3' });
    await expectExactlyOnce(c.col, [
      { pred: ev('joined', 'j2'), what: 'except()ed socket stays in the room' },
      { pred: ev('joined', 'j3'), what: 'other room kept' },
    ]);
    await expectExactlyOnce(a.col, [{ pred: ev('joined', 'j3'), what: 'other room kept' }], { quiet: 0 });
    assert.equal(a.col.matching(ev('joined', 'j2')).length, 0, 'socketsLeave did not remove the socket');
  });

  it('disconnectSockets(true) disconnects the real sockets of the room, on whichever instance', async () => {
    const t0 = Date.now();
    emitter.in(`user_${c.user}`).disconnectSockets(true);
    const d = await c.col.waitLifecycle('disconnect', { after: t0 });
    assert.ok(['io server disconnect', 'transport close'].includes(d.reason), `reason ${d.reason}`);
    await expectNone(a.col, () => false, { quiet: 500 });
    assert.ok(a.socket.connected && b.socket.connected && chat.socket.connected, 'other sockets stayed connected');
  });
});
