// 11. Plain WebSocket clients (/ws/notifications, JSON frames, the FastAPI-era frontend) on a
//     3-instance cluster, next to socket.io-client tabs of the same user: POST /api/v1/notify,
//     PUBLISH notify:user:<id>, a Flask-SocketIO emitter, a non-stored HTTP emit and a user
//     disconnect reach every tab, on every instance, exactly once; a plain client whose instance
//     is killed reconnects (exponential backoff) when it is back and is replayed what it missed.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { startCluster, uid, token, waitUntil } from '../lib/cluster.js';
import { Collector, connect, closeAll, expectExactlyOnce, notif, ev } from '../lib/client.js';
import { PyEmitter } from '../lib/python.js';

/**
 * The FastAPI-era client: `?token=` in the URL, a JSON heartbeat, reconnect with exponential
 * backoff on close. Its frames go to a Collector as socket.io-style events: a notification frame
 * as `notification`, `{"type":"event","event","args"}` as that event.
 */
class PlainClient {
  constructor(url, user, label, { backoffMs = 300, maxBackoffMs = 3000 } = {}) {
    Object.assign(this, { url, user, backoffMs, maxBackoffMs, attempt: 0, opens: 0, closes: [], stopped: false });
    const handlers = {};
    this.fake = { onAny: (fn) => { handlers.any = fn; }, on: (name, fn) => { handlers[name] = fn; } };
    this.col = new Collector(this.fake, label);
    this.handlers = handlers;
    this.open();
  }

  open() {
    const ws = new WebSocket(`${this.url}/ws/notifications?token=${token(this.user)}`);
    this.ws = ws;
    ws.onopen = () => {
      this.opens += 1; this.attempt = 0;
      this.heartbeat = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'ping', timestamp: Date.now(), user_id: this.user, username: 'plain' }));
      }, 1000);
      this.handlers.connect?.();
    };
    ws.onmessage = (event) => {
      const frame = JSON.parse(String(event.data));
      if (frame.type === 'event') this.handlers.any?.(frame.event, ...frame.args);
      else if (frame.type === 'pong') this.handlers.any?.('pong', frame);
      else this.handlers.any?.('notification', frame);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      clearInterval(this.heartbeat);
      this.closes.push({ code: event.code, reason: event.reason, at: Date.now() });
      this.handlers.disconnect?.(String(event.code));
      if (this.stopped) return;
      const delay = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** this.attempt++);
      setTimeout(() => this.open(), delay);
    };
  }

  async welcomed(count = 1) {
    await this.col.waitFor((e) => e.event === 'notification' && e.args[0]?.type === 'welcome', { count, what: `welcome #${count}` });
  }

  stop() { this.stopped = true; clearInterval(this.heartbeat); try { this.ws.close(); } catch { /* ignore */ } }
}

let cluster; let py;
before(async () => {
  cluster = await startCluster(3);
  py = await PyEmitter.start('.venv-json', 'flask', cluster.redis.url);
});
after(async () => { py?.stop(); await cluster?.stop(); });

describe('plain WebSocket tabs next to socket.io tabs, across instances', () => {
  let user; let plainA; let plainC; let sioB;
  before(async () => {
    const [A, B, C] = cluster.nodes;
    user = uid('pw');
    plainA = new PlainClient(A.url, user, 'plain@A');
    plainC = new PlainClient(C.url, user, 'plain@C');
    sioB = await connect(B.url, user, { label: 'sio@B' });
    await plainA.welcomed();
    await plainC.welcomed();
  });
  after(() => { plainA?.stop(); plainC?.stop(); closeAll(sioB); });

  const tabs = () => [plainA.col, plainC.col, sioB.col];

  it('POST /api/v1/notify on B: each tab once, the same id', async () => {
    const id = await cluster.nodes[1].notify({ to: { user }, type: 'info', message: 'http', data: { marker: 'pw-http' } });
    for (const col of tabs()) {
      const [got] = await expectExactlyOnce(col, [{ pred: notif('pw-http'), what: 'HTTP notification' }], { quiet: 300 });
      assert.equal(got.args[0].id, id);
    }
  });

  it('PUBLISH notify:user:<id>: each tab once', async () => {
    const n = await cluster.redis.cli('PUBLISH', `notify:user:${user}`, JSON.stringify({ type: 'info', message: 'cli', marker: 'pw-cli' }));
    assert.equal(n.trim(), '3');
    for (const col of tabs()) await expectExactlyOnce(col, [{ pred: notif('pw-cli'), what: 'notify:user' }], { quiet: 300 });
  });

  it('a Flask-SocketIO emitter: notification and another event, each tab once', async () => {
    await py.emit('notification', [{ type: 'info', message: 'flask', marker: 'pw-flask' }], { to: `user_${user}` });
    await py.emit('progress', [{ marker: 'pw-flask-ev', step: 2 }], { to: `user_${user}` });
    for (const col of tabs()) {
      await expectExactlyOnce(col, [
        { pred: notif('pw-flask'), what: 'flask notification' },
        { pred: ev('progress', 'pw-flask-ev'), what: 'flask event' },
      ], { quiet: 300 });
    }
  });

  it('a non-stored HTTP emit entering on A reaches the plain tab on C once', async () => {
    const r = await cluster.nodes[0].api('POST', '/api/v1/emit', { event: 'build', args: [{ marker: 'pw-emit' }, 7], rooms: [`user_${user}`] });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    for (const col of tabs()) {
      const [got] = await expectExactlyOnce(col, [{ pred: ev('build', 'pw-emit'), what: 'HTTP emit' }], { quiet: 300 });
      assert.deepEqual(got.args, [{ marker: 'pw-emit' }, 7]);
    }
  });

  it('/health counts plain sockets by transport', async () => {
    const [a, b] = await Promise.all([cluster.nodes[0].health(), cluster.nodes[1].health()]);
    assert.equal(a.transports.websocket, 1, JSON.stringify(a));
    assert.equal(b.transports.socketio, 1, JSON.stringify(b));
  });

  it('POST /api/v1/users/<id>/disconnect on B closes the plain tabs on A and C (4000)', async () => {
    const r = await cluster.nodes[1].api('POST', `/api/v1/users/${user}/disconnect`);
    assert.equal(r.status, 202);
    await waitUntil(() => plainA.closes.length && plainC.closes.length, { what: 'plain tabs closed' });
    assert.equal(plainA.closes[0].code, 4000);
    assert.equal(plainC.closes[0].code, 4000);
    await sioB.col.waitLifecycle('disconnect');
  });
});

describe('a plain client whose instance is killed', () => {
  it('reconnects with backoff once the instance is back, and is replayed what it missed, once', async () => {
    const [A, , C] = cluster.nodes;
    const user = uid('pwr');
    const client = new PlainClient(C.url, user, 'plain@C (restart)', { backoffMs: 500, maxBackoffMs: 1000 });
    try {
      await client.welcomed();
      await A.notify({ to: { user }, type: 'info', message: 'before', data: { marker: 'pwr-before' } });
      await expectExactlyOnce(client.col, [{ pred: notif('pwr-before'), what: 'live before' }], { quiet: 0 });
      await sleep(2500); // past the window in which a crashed instance's last deliveries may come again
      await C.kill9();
      await waitUntil(() => client.closes.length >= 1, { what: 'close seen by the client' });
      const missed = await A.notify({ to: { user }, type: 'info', message: 'while C was down', data: { marker: 'pwr-missed' } });
      await C.start();
      await client.welcomed(2);
      const [got] = await expectExactlyOnce(client.col, [
        { pred: notif('pwr-missed'), what: 'replayed after the restart' },
        { pred: notif('pwr-before'), what: 'not replayed again' },
      ]);
      assert.equal(got.args[0].id, missed);
      assert.ok(client.opens >= 2);
    } finally {
      client.stop();
    }
  });
});
