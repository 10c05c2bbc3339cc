// Malformed input over a raw websocket (SPEC §4 "never crash the connection or the server"):
// whatever one client sends, the server keeps serving the others.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { startHerald, connect, closeAll, userToken, uniqueUser, notify, getJson, TIMEOUT } from './herald.mjs';

let server;
let bystander; // a well-behaved socket.io-client that must keep receiving
let bystanderUser;
before(async () => {
  server = await startHerald({ env: { HERALD__SOCKETIO__MAX_PAYLOAD_BYTES: '100000' } });
  bystanderUser = uniqueUser();
  bystander = await connect(server.url, { transports: ['websocket'], auth: { token: userToken(bystanderUser) } });
});
after(async () => { closeAll(); await server?.stop(); });

/** A raw Engine.IO v4 websocket, opened and connected to "/" with a valid token. */
async function rawSocket({ connectNs = true } = {}) {
  const token = userToken(uniqueUser());
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  const waiters = [];
  let closed = null;
  ws.on('message', (data, isBinary) => {
    const f = isBinary ? data : data.toString();
    frames.push(f);
    if (f === '2') ws.send('3'); // answer Engine.IO pings
    for (const w of waiters.splice(0)) w();
  });
  ws.on('close', (code) => { closed = code; for (const w of waiters.splice(0)) w(); });
  ws.on('error', () => {});
  const until = async (pred, what) => {
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const hit = frames.find(pred);
      if (hit !== undefined) return hit;
      if (closed !== null) throw new Error(`closed (${closed}) while waiting for ${what}; frames: ${JSON.stringify(frames)}`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}; frames: ${JSON.stringify(frames)}`);
      await new Promise((r) => { waiters.push(r); setTimeout(r, 200); });
    }
  };
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const open = await until((f) => typeof f === 'string' && f.startsWith('0{'), 'engine.io open');
  const handshake = JSON.parse(open.slice(1));
  assert.ok(handshake.sid && Array.isArray(handshake.upgrades));
  // socketio.* settings reach the Engine.IO handshake (defaults, and max_payload_bytes set above)
  assert.equal(handshake.pingInterval, 15000);
  assert.equal(handshake.pingTimeout, 30000);
  assert.equal(handshake.maxPayload, 100000);
  if (connectNs) {
    ws.send(`40${JSON.stringify({ token })}`);
    await until((f) => typeof f === 'string' && f.startsWith('40{'), 'socket.io connect');
    await until((f) => typeof f === 'string' && f.startsWith('42["notification"'), 'welcome');
  }
  return { ws, frames, until, isClosed: () => closed !== null };
}

async function bystanderStillServed(label) {
  const r = await notify(server, { to: { user: bystanderUser }, type: 'check', message: label });
  assert.equal(r.status, 202, r.text);
  const n = await bystander.inbox.next();
  assert.equal(n.message, label);
  assert.ok(bystander.socket.connected);
  const h = await getJson(server, '/health');
  assert.equal(h.status, 200);
}

describe('raw websocket garbage', () => {
  test('raw client speaks Engine.IO v4 / Socket.IO v5 (sanity)', async () => {
    const raw = await rawSocket();
    const welcome = raw.frames.find((f) => typeof f === 'string' && f.startsWith('42["notification"'));
    const [event, body] = JSON.parse(welcome.slice(2));
    assert.equal(event, 'notification');
    assert.equal(body.type, 'welcome');
    // an acked event over the raw socket
    raw.ws.send('421["room:join","queue-updates"]');
    const ackFrame = await raw.until((f) => typeof f === 'string' && f.startsWith('431'), 'ack');
    assert.deepEqual(JSON.parse(ackFrame.slice(3)), [{ ok: true, room: 'queue-updates' }]);
    raw.ws.close();
  });

  const garbage = [
    ['truncated JSON "42["', '42['],
    ['unterminated string', '42["room:join","abc'],
    ['event is not a string', '42[5,"x"]'],
    ['event packet with an object', '42{"a":1}'],
    ['empty array', '42[]'],
    ['unknown socket.io type', '49["x"]'],
    ['unknown engine.io type', '9hello'],
    ['engine.io message with nothing', '4'],
    ['binary event announcing attachments never sent', '451-["x",{"_placeholder":true,"num":0}]'],
    ['connect to a namespace not served', '40/nope,{"token":"x"}'],
    ['ack id overflow', '4299999999999999999999999["room:join","queue-updates"]'],
    ['lone surrogate-ish bytes as text', '42["\ud800"]'],
  ];
  for (const [label, frame] of garbage) {
    test(`${label}: others keep being served`, async () => {
      const raw = await rawSocket();
      raw.ws.send(frame);
      // whether the server answers with an error, ignores it, or closes this one connection is
      // its choice; we only wait for some reaction or a moment of normal traffic to pass
      raw.ws.send('421["ping",{"timestamp":1}]');
      await Promise.race([
        raw.until((f) => typeof f === 'string' && (f.startsWith('431') || f.startsWith('44')), 'reaction').catch(() => {}),
        new Promise((r) => raw.ws.once('close', r)),
      ]);
      await bystanderStillServed(`after ${label}`);
      raw.ws.terminate();
    });
  }

  test('binary garbage frames: others keep being served', async () => {
    const raw = await rawSocket();
    raw.ws.send(Buffer.from([0x00, 0xff, 0xfe, 0x42, 0x5b, 0x00, 0x80, 0x81]));
    raw.ws.send(Buffer.alloc(4096, 0xab));
    raw.ws.send('421["ping",{"timestamp":1}]');
    await Promise.race([
      raw.until((f) => typeof f === 'string' && f.startsWith('431'), 'reaction').catch(() => {}),
      new Promise((r) => raw.ws.once('close', r)),
    ]);
    await bystanderStillServed('after binary garbage');
    raw.ws.terminate();
  });

  test('garbage before the namespace connect: others keep being served', async () => {
    const raw = await rawSocket({ connectNs: false });
    raw.ws.send('40{not json');
    raw.ws.send('42["room:join","queue-updates"]');
    await Promise.race([
      raw.until((f) => typeof f === 'string' && f.startsWith('44'), 'connect error').catch(() => {}),
      new Promise((r) => raw.ws.once('close', r)),
    ]);
    await bystanderStillServed('after pre-connect garbage');
    raw.ws.terminate();
  });

  test('a frame over socketio.max_payload_bytes closes at most that connection', async () => {
    const raw = await rawSocket();
    raw.ws.send(`42["room:join","${'x'.repeat(200_000)}"]`);
    await Promise.race([
      raw.until((f) => typeof f === 'string' && f.startsWith('431'), 'reaction').catch(() => {}),
      new Promise((r) => raw.ws.once('close', r)),
    ]);
    await bystanderStillServed('after oversized frame');
    raw.ws.terminate();
  });

  test('an error-acked malformed event keeps the sender connected', async () => {
    const raw = await rawSocket();
    raw.ws.send('427["room:join",{"room":null}]');
    const ackFrame = await raw.until((f) => typeof f === 'string' && f.startsWith('437'), 'error ack');
    assert.deepEqual(JSON.parse(ackFrame.slice(3)), [{ ok: false, error: 'expected {"room": "<name>"}' }]);
    raw.ws.send('428["room:join","system-alerts"]');
    const ok = await raw.until((f) => typeof f === 'string' && f.startsWith('438'), 'second ack');
    assert.deepEqual(JSON.parse(ok.slice(3)), [{ ok: true, room: 'system-alerts' }]);
    assert.equal(raw.isClosed(), false);
    raw.ws.close();
  });

  test('many abrupt disconnects mid-handshake: server still healthy', async () => {
    for (let i = 0; i < 20; i++) {
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`);
      ws.on('error', () => {});
      await new Promise((r) => { ws.once('open', r); ws.once('error', r); });
      ws.terminate();
    }
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling&t=x`, { method: 'POST', body: 'garbage' });
    assert.ok(res.status >= 400 && res.status < 500, `polling POST without sid → ${res.status}`);
    await bystanderStillServed('after abrupt disconnects');
  });
});
