// Herald's dashboard: polls <admin path>/api/overview every second with the admin credential
// kept in this tab's sessionStorage, and draws what it gets. No data is in the page itself.
(() => {
  const base = location.pathname.replace(/\/+$/, '');
  const $ = (id) => document.getElementById(id);
  const SERIES = [
    { key: 'events_out', label: 'notifications & events sent', color: '#5b8cff' },
    { key: 'connects', label: 'connects', color: '#3ccf91' },
    { key: 'disconnects', label: 'disconnects', color: '#b18cff' },
    { key: 'refusals', label: 'refusals', color: '#ff6b6b' },
  ];
  const HISTORY = 120;
  let history = [];   // [{t, rates: {key: n}}]
  let previous = null; // {at, totals: {instance: counters}}
  let timer = null;

  const credential = () => sessionStorage.getItem('herald-admin') || '';

  async function call(path, body) {
    const res = await fetch(`${base}/api/${path}`, {
      method: body ? 'POST' : 'GET',
      headers: { authorization: `Bearer ${credential()}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    return { status: res.status, data };
  }

  function showLogin(message) {
    $('dashboard').hidden = true; $('login').hidden = false; $('signout').hidden = true;
    $('status').className = 'status'; $('status').textContent = 'signed out';
    $('login-error').textContent = message || '';
    if (timer) { clearInterval(timer); timer = null; }
  }

  function showDashboard() {
    $('login').hidden = true; $('dashboard').hidden = false; $('signout').hidden = false;
    if (!timer) { refresh(); timer = setInterval(refresh, 1000); }
  }

  const fmtUptime = (s) => s >= 86400 ? `${Math.floor(s / 86400)}d ${Math.floor(s % 86400 / 3600)}h` : s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor(s % 3600 / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  const text = (tag, content, cls) => { const el = document.createElement(tag); el.textContent = content; if (cls) el.className = cls; return el; };

  function rates(instances, at) {
    const totals = {};
    for (const i of instances) totals[i.instance] = i.counters;
    const out = {};
    if (previous) {
      const dt = Math.max((at - previous.at) / 1000, 0.001);
      for (const s of SERIES) {
        let delta = 0;
        for (const [id, c] of Object.entries(totals)) {
          const before = previous.totals[id];
          if (before) delta += Math.max(0, c[s.key] - before[s.key]);
        }
        out[s.key] = delta / dt;
      }
    }
    previous = { at, totals };
    return previous && Object.keys(out).length ? out : null;
  }

  function drawChart() {
    const svg = $('chart');
    const W = 600, H = 160;
    const max = Math.max(1, ...history.flatMap((h) => SERIES.map((s) => h.rates[s.key] || 0)));
    let html = '';
    for (let g = 1; g <= 3; g++) html += `<line x1="0" x2="${W}" y1="${H * g / 4}" y2="${H * g / 4}" stroke="#263049" stroke-width="1"/>`;
    for (const s of SERIES) {
      const pts = history.map((h, i) => `${(i / (HISTORY - 1)) * W},${H - 4 - ((h.rates[s.key] || 0) / max) * (H - 12)}`).join(' ');
      if (history.length > 1) html += `<polyline fill="none" stroke="${s.color}" stroke-width="2" vector-effect="non-scaling-stroke" points="${pts}"/>`;
    }
    svg.innerHTML = html;
    const legend = $('legend'); legend.textContent = '';
    legend.appendChild(text('b', `top of the chart: ${max.toFixed(max < 10 ? 1 : 0)}/s`));
    const last = history[history.length - 1]?.rates || {};
    for (const s of SERIES) {
      const span = text('span', `${s.label} ${(last[s.key] ?? 0).toFixed(1)}/s`);
      span.style.setProperty('--c', s.color);
      legend.appendChild(span);
    }
  }

  function render(data) {
    const instances = data.instances || [];
    const ws = instances.reduce((n, i) => n + i.connections.websocket, 0);
    const polling = instances.reduce((n, i) => n + i.connections.polling, 0);
    const plain = instances.reduce((n, i) => n + (i.connections.plain ?? 0), 0);
    $('mode').textContent = data.mode === 'cluster' ? '· cluster' : '· embedded';
    $('t-connections').textContent = ws + polling + plain;
    $('t-transports').textContent = `${ws} websocket · ${polling} polling · ${plain} plain`;
    $('t-online').textContent = data.online_users ?? '–';
    $('t-instances').textContent = instances.length;
    const down = instances.filter((i) => i.redis === 'down').length;
    $('t-redis').textContent = data.mode === 'cluster' ? (down ? `Redis down on ${down}` : 'Redis up everywhere') : 'no Redis (embedded)';

    const now = Date.now();
    const r = rates(instances, now);
    if (r) { history.push({ t: now, rates: r }); if (history.length > HISTORY) history.shift(); }
    $('t-rate').textContent = r ? r.events_out.toFixed(1) : '–';
    $('t-stored').textContent = `${instances.reduce((n, i) => n + i.counters.stored, 0)} stored since start`;
    drawChart();

    const body = $('instances').querySelector('tbody'); body.textContent = '';
    for (const i of instances) {
      const tr = document.createElement('tr');
      tr.dataset.node = i.node;
      tr.appendChild(text('td', i.node));
      tr.appendChild(text('td', fmtUptime(i.uptime_secs)));
      tr.appendChild(text('td', String(i.connections.websocket), 'ws'));
      tr.appendChild(text('td', String(i.connections.polling), 'polling'));
      tr.appendChild(text('td', String(i.connections.plain ?? 0), 'plain'));
      const redis = document.createElement('td'); redis.appendChild(text('span', i.redis, `pill ${i.redis}`)); tr.appendChild(redis);
      tr.appendChild(text('td', i.ingress_last_message_secs == null ? '–' : `last message ${Math.round(i.ingress_last_message_secs)} s ago`));
      tr.appendChild(text('td', i.outbox == null ? '–' : String(i.outbox)));
      tr.appendChild(text('td', i.webhook_queue == null ? '–' : String(i.webhook_queue)));
      body.appendChild(tr);
    }

    const rooms = new Map();
    for (const i of instances) for (const room of i.rooms) rooms.set(room.room, (rooms.get(room.room) || 0) + room.sockets);
    const top = [...rooms.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10);
    const list = $('rooms'); list.textContent = '';
    if (!top.length) list.appendChild(text('li', 'no shared rooms yet', 'muted'));
    const most = top[0]?.[1] || 1;
    for (const [room, n] of top) {
      const li = document.createElement('li');
      li.appendChild(text('span', room, 'name'));
      const bar = document.createElement('div'); bar.className = 'bar'; bar.style.width = `${Math.max(4, (n / most) * 100)}%`;
      li.appendChild(bar); li.appendChild(text('span', String(n)));
      list.appendChild(li);
    }

    const problems = instances.flatMap((i) => i.problems.map((p) => ({ ...p, node: i.node }))).sort((a, b) => b.at.localeCompare(a.at)).slice(0, 15);
    const ul = $('problems'); ul.textContent = '';
    if (!problems.length) ul.appendChild(text('li', 'none', 'muted'));
    for (const p of problems) {
      const li = document.createElement('li');
      li.appendChild(text('span', `${p.at.slice(11, 19)} ${p.node} ${p.level.toUpperCase()} `, p.level));
      li.appendChild(document.createTextNode(`${p.target}: ${p.message}`));
      ul.appendChild(li);
    }
  }

  async function refresh() {
    try {
      const { status, data } = await call('overview');
      if (status === 401) return showLogin(data?.error || 'refused');
      if (status !== 200) throw new Error(`HTTP ${status}`);
      render(data);
      $('status').className = 'status live';
      $('status').textContent = `live · ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $('status').className = 'status stale';
      $('status').textContent = `no answer (${e.message}); retrying`;
    }
  }

  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    sessionStorage.setItem('herald-admin', $('credential').value.trim());
    $('credential').value = '';
    const { status, data } = await call('overview');
    if (status === 200) { history = []; previous = null; render(data); showDashboard(); } else { sessionStorage.removeItem('herald-admin'); showLogin(data?.error || `refused (${status})`); }
  });
  $('signout').addEventListener('click', () => { sessionStorage.removeItem('herald-admin'); showLogin(); });

  async function action(path, body, done) {
    const { status, data } = await call(path, body);
    $('action-result').textContent = status === 202 ? done(data) : `refused (${status}): ${data?.error || ''}`;
  }
  $('notify-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const user = $('notify-user').value.trim();
    action('notify', { user, message: $('notify-message').value.trim() || undefined },
      (d) => d?.queued ? `queued for user ${user} (Redis unreachable: sent when it returns)` : `sent to user ${user} (id ${d?.id})`);
  });
  $('disconnect-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const user = $('disconnect-user').value.trim();
    action('disconnect', { user }, () => `disconnected every socket of user ${user}`);
  });

  if (credential()) showDashboard(); else showLogin();
})();
