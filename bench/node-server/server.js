// Reference Node socket.io server with Herald's behaviour (SPEC §2-§6 subset), for benchmarks only.
// JWT (HS256) from handshake.auth.token or ?token=, rooms user_<id> / role_<r> / project_<p> / sid,
// welcome `notification`, `room:join` / `room:leave` with acks, POST /api/v1/notify with a Bearer key,
// and optionally Herald's Redis JSON channels (notify:user:<id>, ...) when REDIS_URL is set.
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

const PORT = parseInt(process.env.PORT || '5001', 10);
const HOST = process.env.HOST || '127.0.0.1';
const SECRET = process.env.JWT_SECRET || 'dev-secret-change-me';
const API_KEYS = (process.env.API_KEYS || 'dev-key-change-me').split(',').filter(Boolean);
const JOINABLE = ['queue-updates', 'test-progress-*', 'test-history-updates', 'system-alerts', 'team-updates', 'shared-tests'];
const joinable = JOINABLE.map((p) => new RegExp('^' + p.split('*').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$'));

let seq = 0, lastMs = 0;
function nextId() {
  const now = Date.now();
  if (now > lastMs) { lastMs = now; seq = 0; } else { seq += 1; }
  return `${lastMs}-${seq}`;
}

const httpServer = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ status: 'ok', connections: io.engine.clientsCount }));
  }
  if (req.method === 'POST' && req.url === '/api/v1/notify') {
    const auth = req.headers.authorization || '';
    if (!auth.startsWith('Bearer ') || !API_KEYS.includes(auth.slice(7).trim())) {
      res.writeHead(401, { 'content-type': 'application/json' });
      return res.end('{"error":"missing or invalid API key"}');
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch (e) { return bad(res, 'body is not valid JSON'); }
      const to = body && body.to;
      if (!to || typeof to !== 'object' || Object.keys(to).length !== 1) return bad(res, 'to must be an object with one key');
      if (typeof body.type !== 'string' || !body.type || typeof body.message !== 'string' || !body.message) return bad(res, 'type and message must be non-empty strings');
      let rooms = null;
      if (to.user !== undefined) rooms = [`user_${to.user}`];
      else if (Array.isArray(to.users) && to.users.length) rooms = to.users.map((u) => `user_${u}`);
      else if (to.role !== undefined) rooms = [`role_${to.role}`];
      else if (to.project !== undefined) rooms = [`project_${to.project}`];
      else if (to.room !== undefined) rooms = [String(to.room)];
      else if (to.broadcast === true) rooms = null;
      else return bad(res, 'to must be an object with one of user, users, role, project, room, broadcast');
      const id = nextId();
      const timestamp = new Date().toISOString();
      const priority = body.priority || 2;
      const base = { id, type: body.type, message: body.message, data: body.data || {}, timestamp, priority };
      if (rooms === null) io.emit('notification', { ...base, channel: 'broadcast' });
      else for (const room of rooms) io.to(room).emit('notification', { ...base, channel: room });
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id }));
    });
    return;
  }
  if (!req.url.startsWith('/socket.io/')) { res.writeHead(404); res.end(); }
});

function bad(res, msg) {
  res.writeHead(400, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: msg }));
}

const io = new Server(httpServer, {
  cors: { origin: '*' },
  pingInterval: 15000,
  pingTimeout: 30000,
  maxHttpBufferSize: 1e6,
});

io.use((socket, next) => {
  let token = socket.handshake.auth && socket.handshake.auth.token;
  if (!token) token = socket.handshake.query && socket.handshake.query.token;
  if (!token) {
    const h = socket.handshake.headers.authorization || '';
    if (h.startsWith('Bearer ')) token = h.slice(7).trim();
  }
  if (!token) return next(new Error('missing token'));
  try {
    const claims = jwt.verify(token, SECRET, { algorithms: ['HS256'] });
    if (claims.exp === undefined) return next(new Error('invalid token'));
    const uid = claims.user_id !== undefined ? claims.user_id : claims.sub;
    if (uid === undefined || uid === '') return next(new Error('invalid token'));
    socket.data.identity = { userId: String(uid), role: claims.role, projects: claims.projects || [] };
    return next();
  } catch (e) {
    return next(new Error(e.name === 'TokenExpiredError' ? 'token expired' : 'invalid token'));
  }
});

function grantedRooms(identity) {
  const rooms = [`user_${identity.userId}`];
  if (identity.role) rooms.push(`role_${identity.role}`);
  for (const p of identity.projects) rooms.push(`project_${p}`);
  return rooms;
}

function roomName(data) {
  if (typeof data === 'string') return data;
  if (data && typeof data === 'object' && typeof data.room === 'string') return data.room;
  return null;
}

io.on('connection', (socket) => {
  const identity = socket.data.identity;
  const granted = grantedRooms(identity);
  socket.join(granted); // the socket is already in its sid room
  socket.emit('notification', {
    type: 'welcome', message: 'connected', timestamp: new Date().toISOString(),
    data: { user_id: identity.userId, sid: socket.id },
  });
  socket.on('room:join', (data, ack) => {
    const room = roomName(data);
    let answer;
    if (!room) answer = { ok: false, error: 'expected a room name or {"room": "<name>"}' };
    else if (granted.includes(room)) answer = { ok: true, room };
    else if (/^(user_|role_|project_)/.test(room)) answer = { ok: false, error: 'room not granted by your token' };
    else if (!joinable.some((re) => re.test(room))) answer = { ok: false, error: 'room not joinable' };
    else if (socket.rooms.size - 1 - granted.length >= 50 && !socket.rooms.has(room)) answer = { ok: false, error: 'room limit reached (50 rooms per socket)' };
    else { socket.join(room); answer = { ok: true, room }; }
    if (typeof ack === 'function') ack(answer);
  });
  socket.on('room:leave', (data, ack) => {
    const room = roomName(data);
    let answer;
    if (!room) answer = { ok: false, error: 'expected a room name' };
    else if (granted.includes(room)) answer = { ok: false, error: 'room granted by your token cannot be left' };
    else { socket.leave(room); answer = { ok: true, room }; }
    if (typeof ack === 'function') ack(answer);
  });
});

// Herald's JSON channels over Redis (SPEC §6), the way a Node deployment would wire them.
async function redisIngress(url) {
  const { createClient } = require('redis');
  const sub = createClient({ url });
  sub.on('error', (e) => console.error('redis error', e.message));
  await sub.connect();
  const route = { user: 'user_', role: 'role_', project: 'project_', room: '' };
  await sub.pSubscribe('notify:*', (message, channel) => {
    let payload;
    try { payload = JSON.parse(message); } catch (e) { return; }
    const parts = channel.split(':');
    if (parts[1] === 'global') return io.emit('notification', payload);
    const prefix = route[parts[1]];
    if (prefix === undefined || parts.length < 3) return;
    io.to(prefix + parts.slice(2).join(':')).emit('notification', payload);
  });
  console.log('redis ingress on', url);
}

httpServer.listen(PORT, HOST, () => {
  console.log(`node socket.io ${require('socket.io/package.json').version} listening on ${HOST}:${PORT} pid ${process.pid}`);
  if (process.env.REDIS_URL) redisIngress(process.env.REDIS_URL).catch((e) => console.error('redis ingress failed', e.message));
});

function shutdown() { io.close(); httpServer.close(); setTimeout(() => process.exit(0), 500).unref(); }
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
