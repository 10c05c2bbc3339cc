"""emitter.py for Redis as users deploy it (TLS, Sentinel, Cluster): the same stdin protocol
(one JSON operation a line, one {"ok": ...} line back), with the connection options a backend
passes on such a deployment.

  --mode flask          SocketIO(message_queue=url), no app. Flask-SocketIO has no
                        redis_options: TLS options ride in the URL's query, which redis-py's
                        from_url() hands to the connection (rediss://...?ssl_ca_certs=/ca.pem).
                        Flask-SocketIO 5.x sends only redis:// and rediss:// URLs to
                        RedisManager (redis+sentinel:// would go to Kombu), so for Sentinel:
  --mode flask-manager  SocketIO(client_manager=socketio.RedisManager(url, channel=
                        'flask-socketio', write_only=True, redis_options=...)) then
                        init_app(None): a Flask-SocketIO backend on Sentinel.
  --mode redis          socketio.RedisManager(url, write_only=True, redis_options=...):
                        redis_options go to Redis.from_url() (e.g. {"ssl_ca_certs": path}) or,
                        for redis+sentinel://host:port,host:port/<db>/<master>, to Sentinel().

  --redis-options JSON  keyword arguments for redis_options (modes redis, flask-manager)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emitter import Flask, Raw, decode  # noqa: E402  (same operations as emitter.py)


class FlaskUrl(Flask):
    pass  # SocketIO(message_queue=url)


class FlaskManager(Flask):
    def __init__(self, url, redis_options):
        import socketio
        from flask_socketio import SocketIO
        mgr = socketio.RedisManager(url, channel="flask-socketio", write_only=True, redis_options=redis_options)
        self.sio = SocketIO(client_manager=mgr)
        self.sio.init_app(None)


class RawOptions(Raw):
    def __init__(self, url, redis_options):
        import socketio
        self.mgr = socketio.RedisManager(url, write_only=True, redis_options=redis_options)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["flask", "flask-manager", "redis"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--redis-options", default="{}")
    a = p.parse_args()
    opts = json.loads(a.redis_options)
    if a.mode == "flask":
        emitter = FlaskUrl(a.url)
    elif a.mode == "flask-manager":
        emitter = FlaskManager(a.url, opts)
    else:
        emitter = RawOptions(a.url, opts)
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
