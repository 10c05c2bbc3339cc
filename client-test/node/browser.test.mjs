// A stock page written for the Flask-SocketIO service, in headless Chromium: it loads
// socket.io-client's browser bundle, connects with `io(url, {query:{token}, transports:['websocket']})`,
// and appends every `notification` to the DOM. Herald must work for it unchanged.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { startHerald, userToken, uniqueUser, notify, TIMEOUT } from './herald.mjs';

const require = createRequire(import.meta.url);
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
const skip = haveChromium ? false : `${CHROMIUM} is missing (apt-get install -y chromium); browser test skipped`;
if (!haveChromium) console.log(`# SKIP browser test: ${skip}`);

const bundle = path.join(path.dirname(require.resolve('socket.io-client/package.json')), 'dist', 'socket.io.min.js');

// The page as the Flask front end had it (only the server URL and token are filled in).
const page = (herald, token) => `<!doctype html>
<html><head><meta charset="utf-8"><title>Notifications</title>
<script src="/socket.io.min.js"></script></head>
<body>
<div id="status">connecting</div>
<ul id="notifications"></ul>
<script>
  const socket = io(${JSON.stringify(herald)}, { query: { token: ${JSON.stringify(token)} }, transports: ['websocket'] });
  socket.on('connect', () => { document.getElementById('status').textContent = 'connected'; });
  socket.on('connect_error', (err) => { document.getElementById('status').textContent = 'error: ' + err.message; });
  socket.on('notification', (n) => {
    const li = document.createElement('li');
    li.className = 'notification ' + n.type;
    li.dataset.json = JSON.stringify(n);
    li.textContent = n.message;
    document.getElementById('notifications').appendChild(li);
  });
</script>
</body></html>`;

let server;
let web;
let browser;
let webUrl;
let pageHtml = '';

before(async () => {
  if (!haveChromium) return;
  server = await startHerald();
  web = http.createServer((req, res) => {
    if (req.url === '/socket.io.min.js') {
      res.writeHead(200, { 'content-type': 'application/javascript' });
      res.end(readFileSync(bundle));
    } else if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(pageHtml);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  webUrl = `http://127.0.0.1:${web.address().port}/`;
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (web ? web.close(r) : r()));
  await server?.stop();
});

test('stock Flask-SocketIO page: welcome, then a POSTed notification appears in the DOM', { skip }, async () => {
  const user = uniqueUser();
  pageHtml = page(server.url, userToken(user));
  const context = await browser.newContext();
  const tab = await context.newPage();
  const consoleLines = [];
  tab.on('console', (m) => consoleLines.push(m.text()));
  tab.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  await tab.goto(webUrl);
  try {
    await tab.waitForFunction(() => document.querySelectorAll('li.notification.welcome').length === 1, null, { timeout: TIMEOUT });
  } catch (e) {
    const status = await tab.textContent('#status');
    throw new Error(`no welcome in the page (status: ${status}; console: ${consoleLines.join(' | ')})`);
  }
  assert.equal(await tab.textContent('#status'), 'connected');
  const welcome = JSON.parse(await tab.getAttribute('li.notification.welcome', 'data-json'));
  assert.equal(welcome.message, 'connected');
  assert.equal(welcome.data.user_id, String(user));
  const sid = await tab.evaluate(() => socket.id);
  assert.equal(welcome.data.sid, sid);
  assert.equal(await tab.evaluate(() => socket.io.engine.transport.name), 'websocket');

  const r = await notify(server, { to: { user }, type: 'test_completed', message: 'Test run 12 finished', data: { run: 12 }, priority: 3 });
  assert.equal(r.status, 202, r.text);
  await tab.waitForFunction(() => document.querySelectorAll('li.notification.test_completed').length === 1, null, { timeout: TIMEOUT });
  const items = await tab.$$eval('#notifications li', (lis) => lis.map((li) => li.textContent));
  assert.deepEqual(items, ['connected', 'Test run 12 finished']);
  const n = JSON.parse(await tab.getAttribute('li.notification.test_completed', 'data-json'));
  assert.equal(n.id, r.body.id);
  assert.deepEqual(n.data, { run: 12 });
  assert.equal(n.channel, `user_${user}`);
  assert.equal(n.priority, 3);
  await context.close();
});

test('the same page with a bad token shows the refusal message', { skip }, async () => {
  pageHtml = page(server.url, 'not-a-token');
  const context = await browser.newContext();
  const tab = await context.newPage();
  await tab.goto(webUrl);
  await tab.waitForFunction(() => document.getElementById('status').textContent.startsWith('error'), null, { timeout: TIMEOUT });
  assert.equal(await tab.textContent('#status'), 'error: invalid token');
  await context.close();
});

test('cross-origin default polling page (CORS) also works', { skip }, async () => {
  // the page is served from another origin than Herald: the polling transport needs CORS headers
  const user = uniqueUser();
  pageHtml = page(server.url, userToken(user)).replace(", transports: ['websocket']", '');
  const context = await browser.newContext();
  const tab = await context.newPage();
  await tab.goto(webUrl);
  await tab.waitForFunction(() => document.querySelectorAll('li.notification.welcome').length === 1, null, { timeout: TIMEOUT });
  const r = await notify(server, { to: { user }, type: 'info', message: 'via polling page' });
  assert.equal(r.status, 202);
  await tab.waitForFunction(() => document.querySelectorAll('li.notification.info').length === 1, null, { timeout: TIMEOUT });
  await context.close();
});
