"""A backend's webhook endpoint, for the presence/webhook tests.

It verifies every call with the recipe the README documents: the function is read from the
README's "Verifying a webhook" code block and executed here, so the documented recipe is the
one under test. Endpoints:

    POST /hook      a webhook call: recorded (with whether its signature verified); answered
                    500 while `fail_next` > 0 (then decremented), else 200
    GET  /events    every call received, in order, as JSON
    POST /control   {"fail_next": N}

Usage: webhook_receiver.py --port P --secret S --readme PATH
"""
import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def load_recipe(readme_path):
    text = open(readme_path, encoding="utf-8").read()
    match = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```", text, re.S)
    if not match:
        raise SystemExit("README has no <!-- webhook-verify --> python block")
    scope = {}
    exec(match.group(1), scope)
    return scope["verify"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--readme", required=True)
    args = parser.parse_args()
    verify = load_recipe(args.readme)
    lock = threading.Lock()
    state = {"events": [], "fail_next": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/events":
                with lock:
                    return self.reply(200, state["events"])
            self.reply(404, {"error": "not found"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path == "/control":
                with lock:
                    state.update(json.loads(body))
                return self.reply(200, {"ok": True})
            if self.path != "/hook":
                return self.reply(404, {"error": "not found"})
            try:
                verified = verify(args.secret, self.headers, body)
            except Exception as e:  # a missing header, a bad timestamp
                verified = False
            with lock:
                failing = state["fail_next"] > 0
                if failing:
                    state["fail_next"] -= 1
                state["events"].append({
                    "verified": verified,
                    "answered": 500 if failing else 200,
                    "event_id": self.headers.get("Herald-Event-Id"),
                    "event": self.headers.get("Herald-Event"),
                    "body": json.loads(body) if body else None,
                })
            self.reply(500 if failing else 200, {"ok": not failing})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(json.dumps({"ready": True, "port": args.port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
