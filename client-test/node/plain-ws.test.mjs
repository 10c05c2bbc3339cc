// Plain WebSocket clients on /ws/notifications, written the way the FastAPI-era frontend is:
// `new WebSocket(url + '?token=...')`, one JSON object per text frame, a JSON heartbeat
// {"type":"ping","timestamp","user_id","username"} answered by {"type":"pong","timestamp","server_time"},
// and a reconnect with exponential backoff whenever the socket closes. Once with the `ws`
// package in Node, once with headless Chromium's native WebSocket.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { io } from 'socket.io-client';
import { startHerald, freePort, userToken, uniqueUser, notify, emit, getJson, TIMEOUT } from './herald.mjs';

// The FastAPI-era client, verbatim in spirit: it runs in Node (with `ws`) and in the page (the
// browser's WebSocket), so it is kept as source text for both.
const CLIENT_SOURCE = `
class NotificationSocket {
  constructor(WebSocketImpl, url, { token, userId, username, heartbeatMs = 30000, backoffMs = 500, maxBackoffMs = 8000 }) {
    Object.assign(this, { WebSocketImpl, url, token, userId, username, heartbeatMs, backoffMs, maxBackoffMs });
    this.attempt = 0; this.messages = []; this.closes = []; this.opens = 0; this.stopped = false;
    this.connect();
  }
  connect() {
    const ws = new this.WebSocketImpl(this.url + '?token=' + encodeURIComponent(this.token));
    this.ws = ws;
    ws.onopen = () => {
      this.opens += 1; this.attempt = 0;
      this.heartbeat = setInterval(() => this.ping(), this.heartbeatMs);
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') return;
      this.messages.push(JSON.parse(String(event.data)));
    };
    ws.onclose = (event) => {
      clearInterval(this.heartbeat);
      this.closes.push({ code: event.code, reason: event.reason });
      if (this.stopped) return;
      const delay = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** this.attempt++);
      setTimeout(() => this.connect(), delay);
    };
    ws.onerror = () => {};
  }
  ping() {
    if (this.ws.readyState === 1) {
      this.ws.send(JSON.stringify({ type: 'ping', timestamp: Date.now(), user_id: this.userId, username: this.username }));
    }
  }
  send(frame) { this.ws.send(JSON.stringify(frame)); }
  stop() { this.stopped = true; clearInterval(this.heartbeat); this.ws.close(); }
}`;
const NotificationSocket = new Function(`${CLIENT_SOURCE}; return NotificationSocket;`)();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(check, what, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
const wsUrl = (server) => `ws://127.0.0.1:${server.port}/ws/notifications`;
const find = (client, pred) => client.messages.filter(pred);

/** One raw `ws` connection: resolves {ws, frames, closed} (closed: a promise of {code, reason}). */
async function raw(url, opts = {}) {
  const ws = new WebSocket(url, opts);
  const frames = [];
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('message', (data, isBinary) => { if (!isBinary) frames.push(JSON.parse(data.toString())); });
  ws.on('error', () => {});
  await new Promise((resolve) => { ws.once('open', resolve); ws.once('close', resolve); });
  return { ws, frames, closed };
}

describe('plain WebSocket with the ws package', () => {
  let server;
  let dataDir;
  let port;
  before(async () => {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'herald-plain-ws-'));
    port = await freePort();
    server = await startHerald({ port, env: { HERALD__STORAGE__DATA_DIR: dataDir } });
  });
  after(async () => { await server?.stop(); });

  test('welcome, a POSTed notification, a wrapped event, and pong with server_time', async () => {
    const user = uniqueUser();
    const client = new NotificationSocket(WebSocket, wsUrl(server), { token: userToken(user), userId: user, username: 'ada', heartbeatMs: 200 });
    try {
      const [welcome] = await until(() => find(client, (m) => m.type === 'welcome').length && find(client, (m) => m.type === 'welcome'), 'welcome');
      assert.equal(welcome.message, 'connected');
      assert.equal(welcome.data.user_id, String(user));
      const r = await notify(server, { to: { user }, type: 'grade', message: 'Your essay was graded', data: { score: 9 } });
      assert.equal(r.status, 202, r.text);
      const [n] = await until(() => find(client, (m) => m.type === 'grade').length && find(client, (m) => m.type === 'grade'), 'notification');
      assert.deepEqual({ ...n, timestamp: undefined }, { id: r.body.id, type: 'grade', message: 'Your essay was graded', data: { score: 9 }, priority: 2, channel: `user_${user}`, timestamp: undefined });
      const e = await emit(server, { event: 'progress', args: [42, { step: 'b' }], rooms: [`user_${user}`] });
      assert.equal(e.status, 202);
      const [wrapped] = await until(() => find(client, (m) => m.type === 'event').length && find(client, (m) => m.type === 'event'), 'event');
      assert.deepEqual(wrapped, { type: 'event', event: 'progress', args: [42, { step: 'b' }] });
      const [pong] = await until(() => find(client, (m) => m.type === 'pong').length && find(client, (m) => m.type === 'pong'), 'pong');
      assert.equal(typeof pong.timestamp, 'number');
      assert.ok(pong.server_time >= pong.timestamp - 5000, JSON.stringify(pong));
      const health = await getJson(server, '/health');
      assert.equal(health.body.transports.websocket, 1, JSON.stringify(health.body));
    } finally {
      client.stop();
    }
  });

  test('room:join with an answer frame, and history over the plain socket', async () => {
    const user = uniqueUser();
    const { ws, frames } = await raw(`${wsUrl(server)}?token=${userToken(user)}`);
    await until(() => frames.find((f) => f.type === 'welcome'), 'welcome');
    ws.send(JSON.stringify({ type: 'room:join', room: 'system-alerts' }));
    assert.deepEqual(await until(() => frames.find((f) => f.type === 'room:join'), 'join answer'), { type: 'room:join', ok: true, room: 'system-alerts' });
    const r = await notify(server, { to: { room: 'system-alerts' }, type: 'alert', message: 'maintenance' });
    assert.equal(r.status, 202);
    await until(() => frames.find((f) => f.type === 'alert'), 'room notification');
    ws.send(JSON.stringify({ type: 'notifications:history', limit: 5 }));
    const history = await until(() => frames.find((f) => f.type === 'notifications:history'), 'history');
    assert.equal(history.ok, true, JSON.stringify(history));
    ws.close();
  });

  test('one user, a plain tab and a socket.io tab: one copy each', async () => {
    const user = uniqueUser();
    const plain = new NotificationSocket(WebSocket, wsUrl(server), { token: userToken(user), userId: user, username: 'u' });
    const sio = io(server.url, { query: { token: userToken(user) }, transports: ['websocket'], forceNew: true });
    const sioInbox = [];
    sio.on('notification', (n) => sioInbox.push(n));
    try {
      await until(() => plain.messages.some((m) => m.type === 'welcome') && sioInbox.some((m) => m.type === 'welcome'), 'both welcomes');
      const r = await notify(server, { to: { user }, type: 'once', message: 'one each' });
      const marker = await notify(server, { to: { user }, type: 'marker', message: 'after' });
      await until(() => plain.messages.some((m) => m.type === 'marker') && sioInbox.some((m) => m.type === 'marker'), 'markers');
      assert.equal(plain.messages.filter((m) => m.id === r.body.id).length, 1);
      assert.equal(sioInbox.filter((m) => m.id === r.body.id).length, 1);
      assert.ok(marker.body.id > r.body.id);
    } finally {
      plain.stop();
      sio.close();
    }
  });

  test('hostile input (bad JSON, binary, huge frame, flood, bad tokens) costs only its sender', async () => {
    const user = uniqueUser();
    const bystander = new NotificationSocket(WebSocket, wsUrl(server), { token: userToken(user), userId: user, username: 'b' });
    try {
      await until(() => bystander.messages.some((m) => m.type === 'welcome'), 'bystander welcome');
      const bad = await raw(`${wsUrl(server)}?token=${userToken(uniqueUser())}`);
      bad.ws.send('{not json');
      bad.ws.send('"a string"');
      await until(() => bad.frames.filter((f) => f.type === 'error').length === 2, 'two error frames');
      bad.ws.send(Buffer.from([1, 2, 3]));
      assert.equal((await bad.closed).code, 1003);
      const huge = await raw(`${wsUrl(server)}?token=${userToken(uniqueUser())}`);
      huge.ws.send('x'.repeat(2_000_000));
      assert.equal((await huge.closed).code, 1009);
      const flood = await raw(`${wsUrl(server)}?token=${userToken(uniqueUser())}`);
      for (let i = 0; i < 1000 && flood.ws.readyState === WebSocket.OPEN; i++) flood.ws.send('{"type":"ping"}');
      assert.equal((await flood.closed).code, 4008);
      assert.ok(flood.frames.some((f) => f.error === 'rate limited'));
      for (const [token, code, reason] of [['garbage', 4002, 'invalid token'], [userToken(1, { exp: Math.floor(Date.now() / 1000) - 60 }), 4003, 'token expired']]) {
        const refused = await raw(`${wsUrl(server)}?token=${token}`);
        assert.deepEqual(await refused.closed, { code, reason });
      }
      const r = await notify(server, { to: { user }, type: 'after-abuse', message: 'still here' });
      assert.equal(r.status, 202);
      await until(() => bystander.messages.some((m) => m.type === 'after-abuse'), 'bystander still served');
      assert.equal(bystander.closes.length, 0);
    } finally {
      bystander.stop();
    }
  });

  test('reconnect with backoff after a restart of the server, and replay of what was missed', async () => {
    const user = uniqueUser();
    const client = new NotificationSocket(WebSocket, wsUrl(server), { token: userToken(user), userId: user, username: 'r', backoffMs: 300 });
    try {
      await until(() => client.messages.some((m) => m.type === 'welcome'), 'welcome');
      const before = await notify(server, { to: { user }, type: 'before', message: 'live' });
      await until(() => client.messages.some((m) => m.id === before.body.id), 'live notification');
      await sleep(300); // the clean close's in-flight window
      await server.stop();
      await until(() => client.closes.length >= 1, 'close on shutdown');
      assert.equal(client.closes[0].code, 1001);
      server = await startHerald({ port, env: { HERALD__STORAGE__DATA_DIR: dataDir } });
      // Sent before the client is back (its backoff is still running): stored, then replayed.
      const missed = await notify(server, { to: { user }, type: 'missed', message: 'while away' });
      await until(() => client.opens >= 2, 'reconnected');
      await until(() => client.messages.some((m) => m.id === missed.body.id), 'replayed notification');
      const welcomes = client.messages.filter((m) => m.type === 'welcome').length;
      assert.equal(welcomes, 2);
      assert.equal(client.messages.filter((m) => m.id === missed.body.id).length, 1);
      assert.equal(client.messages.filter((m) => m.id === before.body.id).length, 1, 'nothing replayed twice');
    } finally {
      client.stop();
    }
  });
});

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing; browser test skipped`;

describe('plain WebSocket in headless Chromium (native WebSocket)', () => {
  let server; let web; let browser; let pageHtml = '';
  before(async () => {
    if (skip) return;
    server = await startHerald();
    web = http.createServer((req, res) => {
      res.writeHead(req.url === '/' ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' });
      res.end(req.url === '/' ? pageHtml : '');
    });
    await new Promise((r) => web.listen(0, '127.0.0.1', r));
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
      timeout: 60_000,
    });
  });
  after(async () => {
    await browser?.close();
    await new Promise((r) => (web ? web.close(r) : r()));
    await server?.stop();
  });

  test('the FastAPI-era page: welcome, a notification, pong, in the DOM', { skip }, async () => {
    const user = uniqueUser();
    pageHtml = `<!doctype html><html><head><meta charset="utf-8"></head><body><ul id="n"></ul><script>
${CLIENT_SOURCE}
window.client = new NotificationSocket(WebSocket, ${JSON.stringify(wsUrl(server))}, { token: ${JSON.stringify(userToken(user))}, userId: ${JSON.stringify(String(user))}, username: 'page', heartbeatMs: 200 });
const seen = window.client.messages.push.bind(window.client.messages);
window.client.messages.push = (m) => { const li = document.createElement('li'); li.className = m.type; li.textContent = m.message || ''; document.getElementById('n').appendChild(li); return seen(m); };
</script></body></html>`;
    const context = await browser.newContext();
    const tab = await context.newPage();
    await tab.goto(`http://127.0.0.1:${web.address().port}/`);
    await tab.waitForFunction(() => document.querySelectorAll('li.welcome').length === 1, null, { timeout: TIMEOUT });
    const r = await notify(server, { to: { user }, type: 'grade', message: 'graded in the browser' });
    assert.equal(r.status, 202);
    await tab.waitForFunction(() => document.querySelectorAll('li.grade').length === 1, null, { timeout: TIMEOUT });
    assert.equal(await tab.textContent('li.grade'), 'graded in the browser');
    await tab.waitForFunction(() => document.querySelectorAll('li.pong').length >= 1, null, { timeout: TIMEOUT });
    const pong = await tab.evaluate(() => window.client.messages.find((m) => m.type === 'pong'));
    assert.equal(typeof pong.server_time, 'number');
    assert.equal(await tab.evaluate(() => window.client.closes.length), 0);
    await context.close();
  });
});
