"""Reference Flask-SocketIO (gevent) notification server with Herald's behaviour.

The deployment Herald replaces: Flask-SocketIO under gevent (gevent-websocket), one process.
Same behaviour as app.py / ../node-server/server.js: JWT (HS256) from auth.token or ?token=,
rooms user_<id> / role_<r> / project_<p>, the welcome `notification`, `room:join` / `room:leave`
with acks, POST /api/v1/notify with a Bearer key, Herald's Redis JSON channels when REDIS_URL is set.

Run: PORT=5003 python flask_app.py
"""
from gevent import monkey

monkey.patch_all()

import datetime  # noqa: E402
import fnmatch  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import jwt  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from flask_socketio import SocketIO, emit, join_room, leave_room, rooms  # noqa: E402
from socketio.exceptions import ConnectionRefusedError  # noqa: E402

SECRET = os.environ.get("JWT_SECRET", "dev-secret-change-me")
API_KEYS = [k for k in os.environ.get("API_KEYS", "dev-key-change-me").split(",") if k]
JOINABLE = ["queue-updates", "test-progress-*", "test-history-updates", "system-alerts", "team-updates", "shared-tests"]
GRANTED_PREFIXES = ("user_", "role_", "project_")

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*", ping_interval=15, ping_timeout=30,
                    max_http_buffer_size=1_000_000)
sessions = {}
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


@socketio.on("connect")
def on_connect(auth=None):
    token = auth.get("token") if isinstance(auth, dict) else None
    token = token or request.args.get("token")
    if not token and request.headers.get("Authorization", "").startswith("Bearer "):
        token = request.headers["Authorization"][7:].strip()
    if not token:
        raise ConnectionRefusedError("missing token")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise ConnectionRefusedError("token expired")
    except jwt.InvalidTokenError:
        raise ConnectionRefusedError("invalid token")
    uid = claims.get("user_id", claims.get("sub"))
    if uid is None or uid == "":
        raise ConnectionRefusedError("invalid token")
    uid = str(uid)
    granted = [f"user_{uid}"]
    if claims.get("role"):
        granted.append(f"role_{claims['role']}")
    granted.extend(f"project_{p}" for p in claims.get("projects") or [])
    sessions[request.sid] = granted
    for room in granted:
        join_room(room)
    emit("notification", {"type": "welcome", "message": "connected", "timestamp": iso_now(),
                          "data": {"user_id": uid, "sid": request.sid}})


@socketio.on("disconnect")
def on_disconnect(*_):
    sessions.pop(request.sid, None)


def room_name(data):
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get("room"), str):
        return data["room"]
    return None


@socketio.on("room:join")
def on_join(data=None):
    room = room_name(data)
    if not room:
        return {"ok": False, "error": 'expected a room name or {"room": "<name>"}'}
    granted = sessions.get(request.sid, [])
    if room in granted:
        return {"ok": True, "room": room}
    if room.startswith(GRANTED_PREFIXES):
        return {"ok": False, "error": "room not granted by your token"}
    if not any(fnmatch.fnmatchcase(room, p) for p in JOINABLE):
        return {"ok": False, "error": "room not joinable"}
    current = rooms()
    if room not in current and len(current) - 1 - len(granted) >= 50:
        return {"ok": False, "error": "room limit reached (50 rooms per socket)"}
    join_room(room)
    return {"ok": True, "room": room}


@socketio.on("room:leave")
def on_leave(data=None):
    room = room_name(data)
    if not room:
        return {"ok": False, "error": "expected a room name"}
    if room in sessions.get(request.sid, []):
        return {"ok": False, "error": "room granted by your token cannot be left"}
    leave_room(room)
    return {"ok": True, "room": room}


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.post("/api/v1/notify")
def notify():
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or auth[7:].strip() not in API_KEYS:
        return jsonify(error="missing or invalid API key"), 401
    body = request.get_json(silent=True)
    to = body.get("to") if isinstance(body, dict) else None
    if not isinstance(to, dict) or len(to) != 1:
        return jsonify(error="to must be an object with one key"), 400
    if not body.get("type") or not body.get("message"):
        return jsonify(error="type and message must be non-empty strings"), 400
    (key, value), = to.items()
    if key == "user":
        targets = [f"user_{value}"]
    elif key == "users" and isinstance(value, list) and value:
        targets = [f"user_{u}" for u in value]
    elif key == "role":
        targets = [f"role_{value}"]
    elif key == "project":
        targets = [f"project_{value}"]
    elif key == "room":
        targets = [str(value)]
    elif key == "broadcast" and value is True:
        targets = None
    else:
        return jsonify(error="to must be one of user, users, role, project, room, broadcast"), 400
    nid = next_id()
    base = {"id": nid, "type": body["type"], "message": body["message"], "data": body.get("data") or {},
            "timestamp": iso_now(), "priority": body.get("priority") or 2}
    if targets is None:
        socketio.emit("notification", {**base, "channel": "broadcast"})
    else:
        for room in targets:
            socketio.emit("notification", {**base, "channel": room}, to=room)
    return jsonify(id=nid), 202


def redis_ingress(url):
    import redis
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("notify:*")
    prefixes = {"user": "user_", "role": "role_", "project": "project_", "room": ""}
    for message in pubsub.listen():
        try:
            if message.get("type") != "pmessage":
                continue
            payload = json.loads(message["data"])
            parts = message["channel"].decode().split(":")
            if parts[1] == "global":
                socketio.emit("notification", payload)
            elif parts[1] in prefixes and len(parts) >= 3:
                socketio.emit("notification", payload, to=prefixes[parts[1]] + ":".join(parts[2:]))
        except Exception as e:  # a bad message never stops the ingress
            print("redis ingress:", repr(e), flush=True)


if __name__ == "__main__":
    if os.environ.get("REDIS_URL"):
        socketio.start_background_task(redis_ingress, os.environ["REDIS_URL"])
    socketio.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5003")),
                 log_output=False)
