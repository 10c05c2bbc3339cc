// 12. The dashboard in headless Chromium, against two real instances sharing a Redis: refused
//     without the credential; with it, the connection counts follow sockets the test opens and
//     closes on both instances; the test-notification form reaches a real socket.io-client; a
//     screenshot is written as a test artifact (RUN_DIR/dashboard.png).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startCluster, uid, waitUntil, RUN_DIR } from '../lib/cluster.js';
import { connect, closeAll } from '../lib/client.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (apt-get install -y chromium)`;
const ADMIN_KEY = 'dashboard-test-admin-key';

let cluster; let browser; let page;
before(async () => {
  if (skip) return;
  cluster = await startCluster(2, { env: { HERALD__ADMIN__KEYS: ADMIN_KEY, HERALD__ROOMS__JOINABLE: 'team-*' } });
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  page = await browser.newPage({ viewport: { width: 1100, height: 1300 } });
});
after(async () => { await browser?.close(); await cluster?.stop(); });

/** The connection counts the page shows per instance: {A: {ws, polling}, B: ...}. */
async function shown() {
  return page.$$eval('#instances tbody tr', (rows) => Object.fromEntries(rows.map((r) => [
    r.dataset.node, { ws: Number(r.querySelector('.ws').textContent), polling: Number(r.querySelector('.polling').textContent) },
  ])));
}

describe('dashboard', { skip }, () => {
  it('refuses a wrong credential and shows nothing', async () => {
    await page.goto(`${cluster.nodes[0].url}/admin`);
    await page.fill('#credential', 'not-the-key');
    await page.click('#login-form button');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0);
    assert.match(await page.textContent('#login-error'), /admin credential required/);
    assert.equal(await page.isVisible('#dashboard'), false);
  });

  it('follows sockets opened and closed on two instances, and sends a test notification', async () => {
    await page.fill('#credential', ADMIN_KEY);
    await page.click('#login-form button');
    await page.waitForSelector('#dashboard', { state: 'visible' });
    await page.waitForFunction(() => document.querySelectorAll('#instances tbody tr').length === 2);
    const [A, B] = cluster.nodes;
    const target = uid('dash');
    const clients = [
      await connect(A.url, target),
      await connect(A.url, uid('dash')),
      await connect(B.url, uid('dash'), { opts: { transports: ['polling'] } }),
    ];
    await new Promise((ok) => clients[1].socket.emit('room:join', 'team-blue', ok));
    await waitUntil(async () => { const s = await shown(); return s.A?.ws === 2 && s.B?.polling === 1; }, { timeout: 10000, what: 'counts 2 ws on A, 1 polling on B' });
    assert.equal(await page.textContent('#t-connections'), '3');
    await waitUntil(async () => (await page.textContent('#rooms')).includes('team-blue'), { what: 'the busiest rooms list team-blue' });

    await page.fill('#notify-user', target);
    await page.fill('#notify-message', 'hello from the dashboard');
    await page.click('#notify-form button');
    await clients[0].col.waitFor((e) => e.event === 'notification' && e.args[0]?.message === 'hello from the dashboard', { what: 'the test notification' });
    await page.waitForFunction(() => document.getElementById('action-result').textContent.startsWith('sent to user'));

    await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length > 0);
    await page.screenshot({ path: join(RUN_DIR, 'dashboard.png'), fullPage: true });
    console.log(`dashboard screenshot: ${join(RUN_DIR, 'dashboard.png')}`);

    closeAll(clients[0], clients[2]);
    await waitUntil(async () => { const s = await shown(); return s.A?.ws === 1 && s.B?.polling === 0; }, { timeout: 10000, what: 'counts after closing' });
    const html = await page.content();
    assert.ok(!html.includes(ADMIN_KEY), 'the key is not in the page');
    closeAll(clients);
  });

  it('works in a narrow window', async () => {
    await page.setViewportSize({ width: 380, height: 900 });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `no horizontal page scroll at 380 px (${overflow} px)`);
  });
});
