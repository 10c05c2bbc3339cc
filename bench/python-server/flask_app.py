"""Reference Flask-SocketIO (gevent) notification server with Herald's behaviour.

The deployment Herald replaces: Flask-SocketIO under gevent (gevent-websocket), one process.
Same behaviour as app.py / ../node-server/server.js: JWT (HS256) from auth.token or ?token=,
rooms user_<id> / role_<r> / project_<p>, the welcome `notification`, `room:join` / `room:leave`
with acks, POST /api/v1/notify with a Bearer key, Herald's Redis JSON channels when REDIS_URL is set.

Run: PORT=5003 python flask_app.py
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402

from flask import Flask, jsonify, request  # noqa: E402
from flask_socketio import SocketIO, emit, join_room, leave_room, rooms  # noqa: E402

from common import (api_key_ok, granted_rooms, identify, join_refusal, leave_refusal, notification,  # noqa: E402
                    notify_channel_room, room_name, welcome)

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*", ping_interval=15, ping_timeout=30,
                    max_http_buffer_size=1_000_000)
sessions = {}


@socketio.on("connect")
def on_connect(auth=None):
    token = auth.get("token") if isinstance(auth, dict) else None
    token = token or request.args.get("token")
    if not token and request.headers.get("Authorization", "").startswith("Bearer "):
        token = request.headers["Authorization"][7:].strip()
    identity = identify(token)
    granted = granted_rooms(identity)
    sessions[request.sid] = granted
    for room in granted:
        join_room(room)
    emit("notification", welcome(identity["user_id"], request.sid))


@socketio.on("disconnect")
def on_disconnect(*_):
    sessions.pop(request.sid, None)


@socketio.on("room:join")
def on_join(data=None):
    room = room_name(data)
    refusal = join_refusal(room, sessions.get(request.sid, []), rooms())
    if refusal:
        return {"ok": False, "error": refusal}
    join_room(room)
    return {"ok": True, "room": room}


@socketio.on("room:leave")
def on_leave(data=None):
    room = room_name(data)
    refusal = leave_refusal(room, sessions.get(request.sid, []))
    if refusal:
        return {"ok": False, "error": refusal}
    leave_room(room)
    return {"ok": True, "room": room}


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.post("/api/v1/notify")
def notify():
    if not api_key_ok(request.headers.get("Authorization", "")):
        return jsonify(error="missing or invalid API key"), 401
    try:
        targets, base = notification(request.get_json(silent=True))
    except ValueError as e:
        return jsonify(error=str(e)), 400
    if targets is None:
        socketio.emit("notification", {**base, "channel": "broadcast"})
    else:
        for room in targets:
            socketio.emit("notification", {**base, "channel": room}, to=room)
    return jsonify(id=base["id"]), 202


def redis_ingress(url):
    import redis
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("notify:*")
    for message in pubsub.listen():
        try:
            if message.get("type") != "pmessage":
                continue
            payload = json.loads(message["data"])
            room = notify_channel_room(message["channel"].decode())
            if room is not None:
                socketio.emit("notification", payload, to=room or None)
        except Exception as e:  # a bad message never stops the ingress
            print("redis ingress:", repr(e), flush=True)


if __name__ == "__main__":
    if os.environ.get("REDIS_URL"):
        socketio.start_background_task(redis_ingress, os.environ["REDIS_URL"])
    socketio.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5003")),
                 log_output=False)
