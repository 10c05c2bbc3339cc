"""Herald with the real python-socketio client (what Flask-SocketIO users and backends run).

Each test runs over websocket only and over polling (with the default upgrade).
"""
import queue
import re
import time

import jwt
import pytest
import socketio

from conftest import API_KEY, SECRET, TIMEOUT, mint_token, unique_user

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")

TRANSPORTS = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "polling+upgrade": ["polling", "websocket"],
}


class Client:
    """A python-socketio Client that buffers events into queues from the first packet on."""

    def __init__(self, events=("notification",)):
        self.sio = socketio.Client(reconnection=False)
        self.queues = {}
        self.connect_errors = queue.Queue()
        for name in events:
            self.watch(name)

        @self.sio.event
        def connect_error(data):
            self.connect_errors.put(data)

    def watch(self, name):
        if name in self.queues:
            return
        q = self.queues[name] = queue.Queue()
        self.sio.on(name, lambda *args: q.put(args))

    def next_args(self, name="notification", timeout=TIMEOUT):
        self.watch(name)
        try:
            return self.queues[name].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'no "{name}" event within {timeout} s') from None

    def next(self, name="notification", timeout=TIMEOUT):
        return self.next_args(name, timeout)[0]

    def drain(self, name="notification"):
        out = []
        q = self.queues[name]
        while not q.empty():
            out.append(q.get_nowait())
        return out

    def connect(self, url, **kwargs):
        kwargs.setdefault("wait_timeout", TIMEOUT)
        self.sio.connect(url, **kwargs)
        return self

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:
            pass


@pytest.fixture
def clients():
    made = []

    def make(*args, **kwargs):
        c = Client(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def stray_events(herald, client, name="notification"):
    """Proves `client` received nothing more: a marker sent after is delivered in order."""
    client.watch("__marker")
    marker = f"m-{time.monotonic_ns()}"
    r = herald.emit({"event": "__marker", "args": [marker], "rooms": [client.sio.get_sid()]})
    assert r.status_code == 202, r.text
    while client.next("__marker") != marker:
        pass
    return client.drain(name)


def assert_welcome(welcome, user_id, sid):
    assert set(welcome) == {"type", "message", "timestamp", "data"}
    assert welcome["type"] == "welcome"
    assert welcome["message"] == "connected"
    assert ISO_UTC.match(welcome["timestamp"]), welcome["timestamp"]
    assert welcome["data"] == {"user_id": user_id, "sid": sid}


@pytest.mark.parametrize("transport", TRANSPORTS)
class TestPythonSocketIO:
    def test_auth_dict(self, herald, clients, transport):
        user = unique_user()
        c = clients().connect(herald.url, auth={"token": mint_token({"user_id": user})}, transports=TRANSPORTS[transport])
        assert_welcome(c.next(), str(user), c.sio.get_sid())
        if transport == "polling":
            assert c.sio.transport() == "polling"

    def test_token_in_query_string(self, herald, clients, transport):
        """Flask-SocketIO style: io.connect('http://host?token=...')."""
        user = unique_user()
        token = mint_token({"user_id": user, "role": "viewer"})
        c = clients().connect(f"{herald.url}?token={token}", transports=TRANSPORTS[transport])
        assert_welcome(c.next(), str(user), c.sio.get_sid())

    def test_authorization_header(self, herald, clients, transport):
        user = unique_user()
        token = mint_token({"user_id": user})
        c = clients().connect(herald.url, headers={"Authorization": f"Bearer {token}"}, transports=TRANSPORTS[transport])
        assert_welcome(c.next(), str(user), c.sio.get_sid())

    def test_notification_from_the_api(self, herald, clients, transport):
        user = unique_user()
        c = clients().connect(herald.url, auth={"token": mint_token({"user_id": user})}, transports=TRANSPORTS[transport])
        c.next()  # welcome
        data = {"test_id": 3, "tags": ["a", "b"], "ok": True, "ratio": 0.5}
        r = herald.notify({"to": {"user": user}, "type": "test_failed", "message": "Test 3 failed", "data": data, "priority": 4})
        assert r.status_code == 202, r.text
        n = c.next()
        assert set(n) == {"id", "type", "message", "data", "timestamp", "priority", "channel"}
        assert n["id"] == r.json()["id"]
        assert (n["type"], n["message"], n["data"], n["priority"], n["channel"]) == (
            "test_failed", "Test 3 failed", data, 4, f"user_{user}")
        assert ISO_UTC.match(n["timestamp"])

    def test_emit_with_several_args(self, herald, clients, transport):
        user = unique_user()
        c = clients(events=("notification", "progress")).connect(
            herald.url, auth={"token": mint_token({"user_id": user})}, transports=TRANSPORTS[transport])
        c.next()
        r = herald.emit({"event": "progress", "args": [{"pct": 50}, "half", 2], "rooms": [f"user_{user}"]})
        assert r.status_code == 202, r.text
        assert c.next_args("progress") == ({"pct": 50}, "half", 2)

    def test_room_join_ack_via_call(self, herald, clients, transport):
        user = unique_user()
        c = clients().connect(herald.url, auth={"token": mint_token({"user_id": user})}, transports=TRANSPORTS[transport])
        c.next()
        assert c.sio.call("room:join", "queue-updates", timeout=TIMEOUT) == {"ok": True, "room": "queue-updates"}
        assert c.sio.call("room:join", {"room": "test-progress-py"}, timeout=TIMEOUT) == {"ok": True, "room": "test-progress-py"}
        assert c.sio.call("room:join", f"user_{user + 1}", timeout=TIMEOUT) == {"ok": False, "error": "room not granted by your token"}
        assert c.sio.call("room:join", "nope", timeout=TIMEOUT) == {"ok": False, "error": "room not joinable"}
        assert c.sio.call("room:join", 12, timeout=TIMEOUT) == {"ok": False, "error": 'expected a room name or {"room": "<name>"}'}
        r = herald.notify({"to": {"room": "test-progress-py"}, "type": "progress", "message": "py room"})
        assert r.status_code == 202
        assert c.next()["message"] == "py room"
        assert c.sio.call("room:leave", "test-progress-py", timeout=TIMEOUT) == {"ok": True, "room": "test-progress-py"}
        herald.notify({"to": {"room": "test-progress-py"}, "type": "progress", "message": "after leave"})
        assert stray_events(herald, c) == []

    def test_ping_and_unknown_event(self, herald, clients, transport):
        c = clients(events=("notification", "pong")).connect(
            herald.url, auth={"token": mint_token({"user_id": unique_user()})}, transports=TRANSPORTS[transport])
        c.next()
        reply = c.sio.call("ping", {"timestamp": 42}, timeout=TIMEOUT)
        assert reply["type"] == "pong" and reply["timestamp"] == 42 and isinstance(reply["server_time"], int)
        assert c.next("pong") == reply
        assert c.sio.call("what:ever", {"x": 1}, timeout=TIMEOUT) == {"ok": False, "error": "unknown event"}

    @pytest.mark.parametrize("case", ["missing", "garbage", "expired", "wrong_secret", "alg_none", "no_user"])
    def test_refusal_reaches_connect_error(self, herald, clients, transport, case):
        now = int(time.time())
        token, message = {
            "missing": (None, "missing token"),
            "garbage": ("garbage", "invalid token"),
            "expired": (mint_token({"user_id": 1, "exp": now - 100}), "token expired"),
            "wrong_secret": (mint_token({"user_id": 1}, secret=SECRET + "-wrong"), "invalid token"),
            "alg_none": (jwt_none({"user_id": 1, "exp": now + 100}), "invalid token"),
            "no_user": (mint_token({"role": "admin"}), "invalid token"),
        }[case]
        c = clients()
        kwargs = {"transports": TRANSPORTS[transport]}
        if token is not None:
            kwargs["auth"] = {"token": token}
        with pytest.raises(socketio.exceptions.ConnectionError):
            c.connect(herald.url, **kwargs)
        assert c.connect_errors.get(timeout=TIMEOUT) == {"message": message}

    def test_query_refusal(self, herald, clients, transport):
        c = clients()
        with pytest.raises(socketio.exceptions.ConnectionError):
            c.connect(f"{herald.url}?token=nope", transports=TRANSPORTS[transport])
        assert c.connect_errors.get(timeout=TIMEOUT) == {"message": "invalid token"}


def jwt_none(claims):
    import base64
    import json

    def b64(o):
        return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def test_multi_tab_and_other_user(herald, clients):
    user = unique_user()
    tab1 = clients().connect(herald.url, auth={"token": mint_token({"user_id": user})}, transports=["websocket"])
    tab2 = clients().connect(f"{herald.url}?token={mint_token({'user_id': user})}", transports=["polling"])
    other = clients().connect(herald.url, auth={"token": mint_token({"user_id": unique_user()})}, transports=["websocket"])
    for c in (tab1, tab2, other):
        c.next()
    r = herald.notify({"to": {"user": user}, "type": "info", "message": "both tabs"})
    assert r.status_code == 202
    assert tab1.next() == tab2.next()
    assert stray_events(herald, other) == []


def test_api_refuses_bad_key_and_bad_body(herald):
    assert herald.notify({"to": {"user": 1}, "type": "x", "message": "y"}, key=None).status_code == 401
    assert herald.notify({"to": {"user": 1}, "type": "x", "message": "y"}, key="bad").status_code == 401
    r = herald.notify({"to": {"user": 1}, "type": "x", "message": "y", "priority": 9})
    assert r.status_code == 400 and "priority" in r.json()["error"]
    assert API_KEY  # the fixture's key is the one configured


def test_other_namespace_with_auth():
    """python-socketio connecting to a non-root namespace only (Flask-SocketIO: namespace='/admin')."""
    from conftest import Herald

    server = Herald(env={"HERALD__SOCKETIO__NAMESPACES": "/,/admin", "HERALD__SOCKETIO__PING_INTERVAL_SECS": "2"})
    c = Client()
    try:
        user = unique_user()
        c.sio.on("notification", lambda *a: c.queues["notification"].put(a), namespace="/admin")
        c.connect(server.url, namespaces=["/admin"], auth={"token": mint_token({"user_id": user})}, transports=["websocket"])
        welcome = c.next()
        assert welcome["type"] == "welcome"
        assert welcome["data"] == {"user_id": str(user), "sid": c.sio.get_sid("/admin")}
        r = server.notify({"to": {"user": user}, "type": "info", "message": "admin ns", "namespace": "/admin"})
        assert r.status_code == 202, r.text
        assert c.next()["message"] == "admin ns"
        assert c.sio.call("room:join", "queue-updates", namespace="/admin", timeout=TIMEOUT) == {"ok": True, "room": "queue-updates"}
    finally:
        c.close()
        server.stop()


def test_pyjwt_token_with_float_exp(herald, clients):
    """A Flask backend minting `jwt.encode({"user_id": u, "exp": time.time() + 3600}, ...)`:
    PyJWT keeps the fractional exp (valid RFC 7519 NumericDate) and the Flask service accepted it."""
    user = unique_user()
    token = jwt.encode({"user_id": user, "exp": time.time() + 3600}, SECRET, algorithm="HS256")
    c = clients()
    try:
        c.connect(herald.url, auth={"token": token}, transports=["websocket"])
    except socketio.exceptions.ConnectionError:
        raise AssertionError(f"refused: {c.connect_errors.get(timeout=TIMEOUT)}") from None
    assert c.next()["data"]["user_id"] == str(user)
