"""The README tour's Python client: connects to Herald with a token, prints the welcome
notification and the next notification, then exits 0.

    examples/.venv/bin/python examples/tour.py "$TOKEN"      (or TOKEN=... in the environment)

HERALD_URL: the server (default http://localhost:5000). TOUR_TIMEOUT: seconds to wait for both
notifications (default 120); past it, or when Herald refuses the token, exits 1.
python-socketio comes from PyPI: examples/requirements.txt, installed in examples/.venv.
"""
import json
import os
import sys
import threading
import time
from urllib.parse import urlencode

import socketio

token = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else os.environ.get("TOKEN", "")
url = os.environ.get("HERALD_URL", "http://localhost:5000")
timeout_secs = float(os.environ.get("TOUR_TIMEOUT", "120"))


def say(message):
    print(f"tour.py: {message}", file=sys.stderr, flush=True)


if not token:
    say("no token: pass it as the first argument or in TOKEN")
    print('  TOKEN=$(./target/release/herald token --user 42 --role admin); '
          'examples/.venv/bin/python examples/tour.py "$TOKEN"', file=sys.stderr)
    sys.exit(2)

sio = socketio.Client(reconnection=False)
done = threading.Event()
state = {"seen": 0, "error": None}


@sio.on("notification")
def on_notification(n):
    state["seen"] += 1
    if state["seen"] == 1:
        if n.get("type") != "welcome":
            state["error"] = f"expected the welcome first, got {json.dumps(n)}"
            done.set()
            return
        print(f"welcome: {json.dumps(n, separators=(',', ':'))}", flush=True)
        say("connected; waiting for the next notification (send one with curl)")
        return
    if state["seen"] == 2:
        print(f"notification: {json.dumps(n, separators=(',', ':'))}", flush=True)
        done.set()


@sio.on("connect_error")
def on_connect_error(data):
    state["error"] = f"Herald refused the connection: {data}"
    done.set()


def main():
    deadline = time.monotonic() + timeout_secs
    target = f"{url}?{urlencode({'token': token})}"
    say(f"connecting to {url}")
    # Retry while the server is not up yet (connection refused); a refused token is final.
    while True:
        try:
            sio.connect(target, transports=["websocket"], wait_timeout=10)
            break
        except socketio.exceptions.ConnectionError as e:
            if state["error"]:
                say(state["error"])
                return 1
            if time.monotonic() + 0.5 >= deadline:
                say(f"timed out after {timeout_secs:g} s: could not connect to {url} ({e})")
                return 1
            time.sleep(0.5)
    finished = done.wait(max(0.0, deadline - time.monotonic()))
    sio.disconnect()
    if state["error"]:
        say(state["error"])
        return 1
    if not finished:
        what = "no notification after the welcome" if state["seen"] else "no welcome"
        say(f"timed out after {timeout_secs:g} s ({what} from {url})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
