// The Node floor of Herald's benchmarks: the least a Node server can do and still pass
// bench/loadgen's scenarios, on `ws` (the WebSocket library under socket.io) and a plain `http`
// server. It is what bench/floor-rust is, line for line (see that crate's docs and
// BENCHMARKS.md, "Floors"):
//
//   GET /socket.io/?EIO=4&transport=websocket (Upgrade) -> Engine.IO open `0{...}`; the client's
//     CONNECT `40{"token":...}` (or ?token=) checked like Herald (HS256, exp required, nbf,
//     user_id or sub) -> `40{"sid":...}` + the welcome `42["notification",{...}]`, or `44{...}`
//   `42<n>["room:join","<room>"]` -> `43<n>[{"ok":true,"room":...}]`; ping `2` every 15 s
//   POST /api/v1/notify (Bearer key), Herald's body -> `42["notification",{type, message, data,
//     timestamp, priority, channel, id}]` framed once per room, sent to each member; 202 {"id"}
//   REDIS_URL set: PSUBSCRIBE notify:* and deliver each message the same way
//
// Not done: long-polling, upgrades, pong timeouts, storage, replay, limits, CORS.
//
//   PORT=5000 JWT_SECRET=dev-secret-change-me API_KEYS=dev-key-change-me [REDIS_URL=redis://127.0.0.1:6379/0] \
//     node bench/floor-node/server.js
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const jwt = require('jsonwebtoken');

const PORT = parseInt(process.env.PORT || '5000', 10);
const HOST = process.env.HOST || '127.0.0.1';
const SECRET = process.env.JWT_SECRET || 'dev-secret-change-me';
const API_KEYS = (process.env.API_KEYS || 'dev-key-change-me').split(',').filter(Boolean);
const PING_INTERVAL_MS = 15000;

// room name -> Set of sockets; every socket is also in ALL (broadcasts)
const rooms = new Map();
const ALL = '\0all';
function join(room, ws) {
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Set()));
  members.add(ws);
  ws.rooms.push(room);
}
function leaveAll(ws) {
  for (const room of ws.rooms) {
    const members = rooms.get(room);
    if (members && members.delete(ws) && members.size === 0) rooms.delete(room);
  }
}
// One buffer per frame, shared by every member's send.
function emit(room, frame) {
  const members = rooms.get(room);
  if (!members) return;
  const buf = Buffer.from(frame);
  for (const ws of members) ws.send(buf, { binary: false });
}

let seq = 0, lastMs = 0, sids = 0;
function nextId() {
  const now = Date.now();
  if (now > lastMs) { lastMs = now; seq = 0; } else { seq += 1; }
  return `${lastMs}-${seq}`;
}

// Herald's payload, in Herald's field order.
function frame(body, timestamp, channel, id) {
  const data = body.data === undefined || body.data === null ? {} : body.data;
  return '42["notification",' + JSON.stringify({
    type: body.type, message: body.message, data, timestamp,
    priority: Number.isInteger(body.priority) ? body.priority : 2, channel, id,
  }) + ']';
}
const validBody = (b) => b && typeof b.type === 'string' && b.type && typeof b.message === 'string' && b.message;
const name = (v) => (typeof v === 'string' && v) ? v : (typeof v === 'number' ? String(v) : null);

function verify(token) {
  let claims;
  try { claims = jwt.verify(token, SECRET, { algorithms: ['HS256'] }); } catch (e) { return null; }
  if (typeof claims.exp !== 'number' || claims.exp < 0) return null;
  const userId = name(claims.user_id) || name(claims.sub);
  if (!userId) return null;
  const projects = Array.isArray(claims.projects) ? claims.projects.map(name).filter(Boolean) : [];
  return { userId, role: name(claims.role), projects };
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') return reply(res, 200, { status: 'ok', connections: wss.clients.size });
  if (req.method === 'POST' && req.url === '/api/v1/notify') {
    const auth = req.headers.authorization || '';
    if (!auth.startsWith('Bearer ') || !API_KEYS.includes(auth.slice(7).trim())) return reply(res, 401, { error: 'missing or invalid API key' });
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch (e) { return reply(res, 400, { error: 'body is not valid JSON' }); }
      const to = body && body.to;
      if (!to || typeof to !== 'object' || Object.keys(to).length !== 1) return reply(res, 400, { error: 'to must be an object with one key' });
      if (!validBody(body)) return reply(res, 400, { error: 'type and message must be non-empty strings' });
      let targets = []; // [room, channel]
      if (to.user !== undefined && name(to.user)) targets = [`user_${name(to.user)}`];
      else if (Array.isArray(to.users)) targets = to.users.map(name).filter(Boolean).map((u) => `user_${u}`);
      else if (to.role !== undefined && name(to.role)) targets = [`role_${name(to.role)}`];
      else if (to.project !== undefined && name(to.project)) targets = [`project_${name(to.project)}`];
      else if (to.room !== undefined && name(to.room)) targets = [name(to.room)];
      targets = targets.map((r) => [r, r]);
      if (to.broadcast === true) targets = [[ALL, 'broadcast']];
      if (!targets.length) return reply(res, 400, { error: 'to must be an object with one of user, users, role, project, room, broadcast' });
      const id = nextId();
      const timestamp = new Date().toISOString();
      for (const [room, channel] of targets) emit(room, frame(body, timestamp, channel, id));
      reply(res, 202, { id });
    });
    return;
  }
  reply(res, req.url.startsWith('/socket.io/') ? 400 : 404, { error: 'not found' });
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: true });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://floor');
  if (url.pathname !== '/socket.io/' || url.searchParams.get('EIO') !== '4' || url.searchParams.get('transport') !== 'websocket') {
    socket.end('HTTP/1.1 400 Bad Request\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onSocket(ws, url.searchParams.get('token')));
});

function onSocket(ws, queryToken) {
  const sid = `floor${(sids++).toString(16).padStart(11, '0')}`;
  ws.rooms = [];
  ws.send(`0{"sid":"${sid}","upgrades":[],"pingInterval":${PING_INTERVAL_MS},"pingTimeout":30000,"maxPayload":1000000}`);
  let identity = null;
  const connectTimer = setTimeout(() => ws.terminate(), 10000);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (!identity) {
      if (!text.startsWith('40')) return ws.terminate();
      clearTimeout(connectTimer);
      let auth = null;
      try { auth = text.length > 2 ? JSON.parse(text.slice(2)) : null; } catch (e) { /* no auth */ }
      const token = (auth && typeof auth.token === 'string' && auth.token) || queryToken;
      identity = token ? verify(token) : null;
      if (!identity) { ws.send('44{"message":"invalid token"}'); return ws.close(); }
      join(ALL, ws);
      join(`user_${identity.userId}`, ws);
      if (identity.role) join(`role_${identity.role}`, ws);
      for (const p of identity.projects) join(`project_${p}`, ws);
      ws.send(`40{"sid":"${sid}"}`);
      ws.send('42["notification",' + JSON.stringify({ type: 'welcome', message: 'connected', timestamp: new Date().toISOString(),
        data: { user_id: identity.userId, sid } }) + ']');
      return;
    }
    onPacket(ws, text);
  });
  ws.on('close', () => { clearTimeout(connectTimer); leaveAll(ws); });
  ws.on('error', () => {});
}

function onPacket(ws, text) {
  if (text === '2') return ws.send('3');
  if (text === '1' || text.startsWith('41')) return ws.close();
  if (!text.startsWith('42')) return;
  const m = /^42(\d*)(\[.*)$/s.exec(text);
  if (!m) return;
  let args;
  try { args = JSON.parse(m[2]); } catch (e) { return; }
  if (!Array.isArray(args) || args[0] !== 'room:join') return;
  const room = typeof args[1] === 'string' ? args[1] : (args[1] && typeof args[1].room === 'string' ? args[1].room : null);
  let answer;
  if (!room) answer = { ok: false, error: 'expected a room name or {"room": "<name>"}' };
  else if (ws.rooms.includes(room)) answer = { ok: true, room };
  else if (/^(user_|role_|project_)/.test(room)) answer = { ok: false, error: 'room not granted by your token' };
  else { join(room, ws); answer = { ok: true, room }; }
  if (m[1]) ws.send(`43${m[1]}[${JSON.stringify(answer)}]`);
}

// One timer pings every socket (a timer per socket would cost Node more than it costs tokio).
setInterval(() => { for (const ws of wss.clients) ws.send('2'); }, PING_INTERVAL_MS).unref();

async function redisIngress(url) {
  const { createClient } = require('redis');
  const sub = createClient({ url });
  sub.on('error', (e) => console.error('redis error', e.message));
  await sub.connect();
  const route = { user: 'user_', role: 'role_', project: 'project_', room: '' };
  await sub.pSubscribe('notify:*', (message, channel) => {
    let body;
    try { body = JSON.parse(message); } catch (e) { return; }
    if (!validBody(body)) return;
    const parts = channel.split(':');
    let room, ch;
    if (parts[1] === 'global' && parts.length === 2) { room = ALL; ch = 'broadcast'; }
    else if (route[parts[1]] !== undefined && parts.length >= 3) { room = ch = route[parts[1]] + parts.slice(2).join(':'); }
    else return;
    emit(room, frame(body, new Date().toISOString(), ch, nextId()));
  });
  console.log('redis ingress on', url);
}

server.listen(PORT, HOST, () => {
  console.log(`node floor (ws ${require('ws/package.json').version}) listening on ${HOST}:${PORT} pid ${process.pid}`);
  if (process.env.REDIS_URL) redisIngress(process.env.REDIS_URL).catch((e) => console.error('redis ingress failed', e.message));
});

function shutdown() { wss.close(); server.close(); setTimeout(() => process.exit(0), 500).unref(); }
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
