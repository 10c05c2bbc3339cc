"""What the two python baselines (app.py: python-socketio ASGI; flask_app.py: Flask-SocketIO
with gevent) share: the same JWT check, rooms policy, notification envelope and notify:*
channels as Herald, so that the benchmark compares servers doing the same job. Only the
framework glue differs between the two files."""

import datetime
import fnmatch
import os
import threading
import time

import jwt
from socketio.exceptions import ConnectionRefusedError

SECRET = os.environ.get("JWT_SECRET", "dev-secret-change-me")
API_KEYS = [k for k in os.environ.get("API_KEYS", "dev-key-change-me").split(",") if k]
JOINABLE = ["queue-updates", "test-progress-*", "test-history-updates", "system-alerts", "team-updates", "shared-tests"]
GRANTED_PREFIXES = ("user_", "role_", "project_")
MAX_ROOMS = 50

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


def api_key_ok(authorization):
    return authorization.startswith("Bearer ") and authorization[7:].strip() in API_KEYS


def identify(token):
    """The socket's identity from its token, or ConnectionRefusedError with Herald's message."""
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
    return {"user_id": str(uid), "role": claims.get("role"), "projects": claims.get("projects") or []}


def granted_rooms(identity):
    rooms = [f"user_{identity['user_id']}"]
    if identity.get("role"):
        rooms.append(f"role_{identity['role']}")
    rooms.extend(f"project_{p}" for p in identity.get("projects") or [])
    return rooms


def welcome(user_id, sid):
    return {"type": "welcome", "message": "connected", "timestamp": iso_now(), "data": {"user_id": user_id, "sid": sid}}


def room_name(data):
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get("room"), str):
        return data["room"]
    return None


def join_refusal(room, granted, current):
    """Why `room:join` is refused (None: allowed); `current` are the socket's rooms, sid room included."""
    if not room:
        return 'expected a room name or {"room": "<name>"}'
    if room in granted:
        return None
    if room.startswith(GRANTED_PREFIXES):
        return "room not granted by your token"
    if not any(fnmatch.fnmatchcase(room, p) for p in JOINABLE):
        return "room not joinable"
    if room not in current and len(current) - 1 - len(granted) >= MAX_ROOMS:
        return f"room limit reached ({MAX_ROOMS} rooms per socket)"
    return None


def leave_refusal(room, granted):
    if not room:
        return "expected a room name"
    if room in granted:
        return "room granted by your token cannot be left"
    return None


def notification(body):
    """From a `POST /api/v1/notify` body: (rooms or None for a broadcast, envelope without channel),
    or ValueError with the reason for a 400."""
    to = body.get("to") if isinstance(body, dict) else None
    if not isinstance(to, dict) or len(to) != 1:
        raise ValueError("to must be an object with one key")
    if not body.get("type") or not body.get("message"):
        raise ValueError("type and message must be non-empty strings")
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
        raise ValueError("to must be one of user, users, role, project, room, broadcast")
    envelope = {"id": next_id(), "type": body["type"], "message": body["message"], "data": body.get("data") or {},
                "timestamp": iso_now(), "priority": body.get("priority") or 2}
    return rooms, envelope


_NOTIFY_PREFIXES = {"user": "user_", "role": "role_", "project": "project_", "room": ""}


def notify_channel_room(channel):
    """The room a `notify:*` channel maps to ("" for notify:global, None for an unknown channel)."""
    parts = channel.split(":")
    if parts[1:2] == ["global"]:
        return ""
    if len(parts) >= 3 and parts[1] in _NOTIFY_PREFIXES:
        return _NOTIFY_PREFIXES[parts[1]] + ":".join(parts[2:])
    return None
