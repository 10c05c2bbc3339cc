"""Reference python-socketio (ASGI, uvicorn) notification server with Herald's behaviour.

Benchmark-only twin of bench/node-server/server.js: JWT (HS256) from auth.token or ?token=,
rooms user_<id> / role_<r> / project_<p>, the welcome `notification`, `room:join` / `room:leave`
with acks, POST /api/v1/notify with a Bearer key, and Herald's Redis JSON channels
(notify:user:<id>, ...) when REDIS_URL is set.

Run: uvicorn app:app --host 127.0.0.1 --port 5002 --log-level warning
"""
import asyncio
import datetime
import fnmatch
import json
import os
import threading
import time
from urllib.parse import parse_qs

import jwt
import socketio

SECRET = os.environ.get("JWT_SECRET", "dev-secret-change-me")
API_KEYS = [k for k in os.environ.get("API_KEYS", "dev-key-change-me").split(",") if k]
JOINABLE = ["queue-updates", "test-progress-*", "test-history-updates", "system-alerts", "team-updates", "shared-tests"]
GRANTED_PREFIXES = ("user_", "role_", "project_")

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", ping_interval=15, ping_timeout=30,
                           max_http_buffer_size=1_000_000)

_id_lock = threading.Lock()
_last = [0, 0]


def next_id():
    now = int(time.time() * 1000)
    with _id_lock:
        if now > _last[0]:
            _last[0], _last[1] = now, 0
        else:
            _last[1] += 1
        return f"{_last[0]}-{_last[1]}"


def iso_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def granted_rooms(identity):
    rooms = [f"user_{identity['user_id']}"]
    if identity.get("role"):
        rooms.append(f"role_{identity['role']}")
    rooms.extend(f"project_{p}" for p in identity.get("projects") or [])
    return rooms


@sio.event
async def connect(sid, environ, auth):
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        token = (parse_qs(environ.get("QUERY_STRING", "")).get("token") or [None])[0]
    if not token:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Bearer "):
            token = header[7:].strip()
    if not token:
        raise socketio.exceptions.ConnectionRefusedError("missing token")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise socketio.exceptions.ConnectionRefusedError("token expired")
    except jwt.InvalidTokenError:
        raise socketio.exceptions.ConnectionRefusedError("invalid token")
    uid = claims.get("user_id", claims.get("sub"))
    if uid is None or uid == "":
        raise socketio.exceptions.ConnectionRefusedError("invalid token")
    identity = {"user_id": str(uid), "role": claims.get("role"), "projects": claims.get("projects") or []}
    granted = granted_rooms(identity)
    await sio.save_session(sid, {"identity": identity, "granted": granted})
    for room in granted:
        await sio.enter_room(sid, room)
    await sio.emit("notification", {"type": "welcome", "message": "connected", "timestamp": iso_now(),
                                    "data": {"user_id": identity["user_id"], "sid": sid}}, to=sid)


def room_name(data):
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get("room"), str):
        return data["room"]
    return None


@sio.on("room:join")
async def room_join(sid, data=None):
    room = room_name(data)
    if not room:
        return {"ok": False, "error": 'expected a room name or {"room": "<name>"}'}
    session = await sio.get_session(sid)
    granted = session["granted"]
    if room in granted:
        return {"ok": True, "room": room}
    if room.startswith(GRANTED_PREFIXES):
        return {"ok": False, "error": "room not granted by your token"}
    if not any(fnmatch.fnmatchcase(room, p) for p in JOINABLE):
        return {"ok": False, "error": "room not joinable"}
    current = sio.rooms(sid)
    if room not in current and len(current) - 1 - len(granted) >= 50:
        return {"ok": False, "error": "room limit reached (50 rooms per socket)"}
    await sio.enter_room(sid, room)
    return {"ok": True, "room": room}


@sio.on("room:leave")
async def room_leave(sid, data=None):
    room = room_name(data)
    if not room:
        return {"ok": False, "error": "expected a room name"}
    session = await sio.get_session(sid)
    if room in session["granted"]:
        return {"ok": False, "error": "room granted by your token cannot be left"}
    await sio.leave_room(sid, room)
    return {"ok": True, "room": room}


async def _json(send, status, body):
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


async def api(scope, receive, send):
    """Plain ASGI app for everything that is not /socket.io/."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("REDIS_URL"):
                    asyncio.get_running_loop().create_task(redis_ingress(os.environ["REDIS_URL"]))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if method == "GET" and path == "/health":
        return await _json(send, 200, {"status": "ok"})
    if not (method == "POST" and path == "/api/v1/notify"):
        return await _json(send, 404, {"error": "not found"})
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode()
    if not auth.startswith("Bearer ") or auth[7:].strip() not in API_KEYS:
        return await _json(send, 401, {"error": "missing or invalid API key"})
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        return await _json(send, 400, {"error": "body is not valid JSON"})
    to = body.get("to") if isinstance(body, dict) else None
    if not isinstance(to, dict) or len(to) != 1:
        return await _json(send, 400, {"error": "to must be an object with one key"})
    if not body.get("type") or not body.get("message"):
        return await _json(send, 400, {"error": "type and message must be non-empty strings"})
    (key, value), = to.items()
    if key == "user":
        rooms = [f"user_{value}"]
    elif key == "users" and isinstance(value, list) and value:
        rooms = [f"user_{u}" for u in value]
    elif key == "role":
        rooms = [f"role_{value}"]
    elif key == "project":
        rooms = [f"project_{value}"]
    elif key == "room":
        rooms = [str(value)]
    elif key == "broadcast" and value is True:
        rooms = None
    else:
        return await _json(send, 400, {"error": "to must be one of user, users, role, project, room, broadcast"})
    nid, ts = next_id(), iso_now()
    base = {"id": nid, "type": body["type"], "message": body["message"], "data": body.get("data") or {},
            "timestamp": ts, "priority": body.get("priority") or 2}
    if rooms is None:
        await sio.emit("notification", {**base, "channel": "broadcast"})
    else:
        for room in rooms:
            await sio.emit("notification", {**base, "channel": room}, room=room)
    return await _json(send, 202, {"id": nid})


async def redis_ingress(url):
    """Herald's JSON channels (notify:user:<id>, notify:role:<r>, ...), as a python deployment would wire them."""
    import redis.asyncio as aioredis
    client = aioredis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.psubscribe("notify:*")
    prefixes = {"user": "user_", "role": "role_", "project": "project_", "room": ""}
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if not message or message.get("type") != "pmessage":
            continue
        try:
            payload = json.loads(message["data"])
            parts = message["channel"].decode().split(":")
            if parts[1] == "global":
                await sio.emit("notification", payload)
            elif parts[1] in prefixes and len(parts) >= 3:
                await sio.emit("notification", payload, room=prefixes[parts[1]] + ":".join(parts[2:]))
        except Exception as e:  # a bad message never stops the ingress
            print("redis ingress:", repr(e), flush=True)


app = socketio.ASGIApp(sio, other_asgi_app=api)
