"""Write-only python-socketio / Flask-SocketIO emitter driven by JSON lines on stdin.

Runs inside one of the test virtualenvs (.venv-json: python-socketio >= 5.14, JSON queue
messages; .venv-pickle: python-socketio 5.13, pickled queue messages) and uses the real
libraries exactly as a backend would:

  --mode flask  SocketIO(message_queue=url) with no app (write-only), its emit/close_room and
                its .server for enter_room/leave_room/disconnect
  --mode redis  socketio.RedisManager(url, write_only=True)
  --mode async  socketio.AsyncRedisManager(url, write_only=True)
                (a bare write-only manager cannot disconnect(): it calls its own missing
                server first; backends disconnect through SocketIO/Server, so does this script)

Each stdin line is one operation, e.g.
  {"op": "emit", "event": "notification", "args": [{"marker": "m1"}], "to": "user_1",
   "skip_sid": null, "namespace": "/"}
  {"op": "enter_room", "sid": "...", "room": "r", "namespace": "/"}
  {"op": "leave_room", ...}  {"op": "close_room", "room": "r"}  {"op": "disconnect", "sid": "..."}
Values {"$bytes": "<base64>"} become bytes and {"$tuple": [...]} tuples. After each operation
one line is printed: {"ok": true} or {"ok": false, "error": "..."}.
"""
import argparse
import asyncio
import base64
import json
import sys


def decode(v):
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return base64.b64decode(v["$bytes"])
        if set(v) == {"$tuple"}:
            return tuple(decode(x) for x in v["$tuple"])
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def manager_data(args):
    # the managers take one `data`: a tuple means several arguments
    return args[0] if len(args) == 1 else tuple(args)


class Flask:
    def __init__(self, url):
        from flask_socketio import SocketIO
        self.sio = SocketIO(message_queue=url)

    def run(self, m):
        ns = m.get("namespace") or "/"
        op = m["op"]
        if op == "emit":
            kwargs = {"namespace": ns}
            if m.get("to") is not None:
                kwargs["to"] = m["to"]
            if m.get("skip_sid") is not None:
                kwargs["skip_sid"] = m["skip_sid"]
            # Flask-SocketIO takes one payload; a tuple means several arguments
            self.sio.emit(m["event"], manager_data(m["args"]), **kwargs)
        elif op == "enter_room":
            self.sio.server.enter_room(m["sid"], m["room"], namespace=ns)
        elif op == "leave_room":
            self.sio.server.leave_room(m["sid"], m["room"], namespace=ns)
        elif op == "close_room":
            self.sio.close_room(m["room"], namespace=ns)
        elif op == "disconnect":
            self.sio.server.disconnect(m["sid"], namespace=ns)
        else:
            raise ValueError(f"unknown op {op}")


class Raw:
    def __init__(self, url):
        import socketio
        self.mgr = socketio.RedisManager(url, write_only=True)

    def run(self, m):
        ns = m.get("namespace") or "/"
        op = m["op"]
        if op == "emit":
            self.mgr.emit(m["event"], manager_data(m["args"]), namespace=ns, room=m.get("to"), skip_sid=m.get("skip_sid"))
        elif op == "enter_room":
            self.mgr.enter_room(m["sid"], ns, m["room"])
        elif op == "leave_room":
            self.mgr.leave_room(m["sid"], ns, m["room"])
        elif op == "close_room":
            self.mgr.close_room(m["room"], namespace=ns)
        elif op == "disconnect":
            self.mgr.disconnect(m["sid"], namespace=ns)
        else:
            raise ValueError(f"unknown op {op}")


class Async:
    def __init__(self, url):
        import socketio
        self.loop = asyncio.new_event_loop()
        self.mgr = socketio.AsyncRedisManager(url, write_only=True)

    def run(self, m):
        self.loop.run_until_complete(self._run(m))

    async def _run(self, m):
        ns = m.get("namespace") or "/"
        op = m["op"]
        if op == "emit":
            await self.mgr.emit(m["event"], manager_data(m["args"]), namespace=ns, room=m.get("to"), skip_sid=m.get("skip_sid"))
        elif op == "enter_room":
            await self.mgr.enter_room(m["sid"], ns, m["room"])
        elif op == "leave_room":
            await self.mgr.leave_room(m["sid"], ns, m["room"])
        elif op == "close_room":
            await self.mgr.close_room(m["room"], namespace=ns)
        elif op == "disconnect":
            await self.mgr.disconnect(m["sid"], namespace=ns)
        else:
            raise ValueError(f"unknown op {op}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["flask", "redis", "async"], required=True)
    p.add_argument("--url", required=True)
    a = p.parse_args()
    emitter = {"flask": Flask, "redis": Raw, "async": Async}[a.mode](a.url)
    import socketio
    print(json.dumps({"ready": True, "python_socketio": getattr(socketio, "__version__", None)}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            emitter.run(decode(json.loads(line)))
            print(json.dumps({"ok": True}), flush=True)
        except Exception as e:  # reported to the test, which fails on it
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
