"""Reference python-socketio (ASGI, uvicorn) notification server with Herald's behaviour.

Benchmark-only twin of bench/node-server/server.js: JWT (HS256) from auth.token or ?token=,
rooms user_<id> / role_<r> / project_<p>, the welcome `notification`, `room:join` / `room:leave`
with acks, POST /api/v1/notify with a Bearer key, and Herald's Redis JSON channels
(notify:user:<id>, ...) when REDIS_URL is set.

Run: uvicorn app:app --host 127.0.0.1 --port 5002 --log-level warning
"""
import asyncio
import json
import os
from urllib.parse import parse_qs

import socketio

from common import (api_key_ok, granted_rooms, identify, join_refusal, leave_refusal, notification,
                    notify_channel_room, room_name, welcome)

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", ping_interval=15, ping_timeout=30,
                           max_http_buffer_size=1_000_000)

@sio.event
async def connect(sid, environ, auth):
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        token = (parse_qs(environ.get("QUERY_STRING", "")).get("token") or [None])[0]
    if not token:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Bearer "):
            token = header[7:].strip()
    identity = identify(token)
    granted = granted_rooms(identity)
    await sio.save_session(sid, {"identity": identity, "granted": granted})
    for room in granted:
        await sio.enter_room(sid, room)
    await sio.emit("notification", welcome(identity["user_id"], sid), to=sid)


@sio.on("room:join")
async def room_join(sid, data=None):
    room = room_name(data)
    granted = (await sio.get_session(sid))["granted"] if room else []
    refusal = join_refusal(room, granted, sio.rooms(sid))
    if refusal:
        return {"ok": False, "error": refusal}
    await sio.enter_room(sid, room)
    return {"ok": True, "room": room}


@sio.on("room:leave")
async def room_leave(sid, data=None):
    room = room_name(data)
    granted = (await sio.get_session(sid))["granted"] if room else []
    refusal = leave_refusal(room, granted)
    if refusal:
        return {"ok": False, "error": refusal}
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
    if not api_key_ok(headers.get(b"authorization", b"").decode()):
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
    try:
        rooms, base = notification(body)
    except ValueError as e:
        return await _json(send, 400, {"error": str(e)})
    if rooms is None:
        await sio.emit("notification", {**base, "channel": "broadcast"})
    else:
        for room in rooms:
            await sio.emit("notification", {**base, "channel": room}, room=room)
    return await _json(send, 202, {"id": base["id"]})


async def redis_ingress(url):
    """Herald's JSON channels (notify:user:<id>, notify:role:<r>, ...), as a python deployment would wire them."""
    import redis.asyncio as aioredis
    client = aioredis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.psubscribe("notify:*")
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if not message or message.get("type") != "pmessage":
            continue
        try:
            payload = json.loads(message["data"])
            room = notify_channel_room(message["channel"].decode())
            if room is not None:
                await sio.emit("notification", payload, room=room or None)
        except Exception as e:  # a bad message never stops the ingress
            print("redis ingress:", repr(e), flush=True)


app = socketio.ASGIApp(sio, other_asgi_app=api)
