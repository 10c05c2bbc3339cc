"""Starts the real Herald binary for the Python client tests.

HERALD_BIN (default <repo>/target/debug/herald) on a free loopback port, with the test secret
and API key as HERALD__* overrides; waits for /health; SIGTERM at the end of the session.
"""
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import pytest
import requests

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
HERALD_BIN = Path(os.environ.get("HERALD_BIN") or REPO_ROOT / "target" / "debug" / "herald").resolve()
SECRET = "client-test-secret-0123456789abcdef"
API_KEY = "client-test-api-key"
TIMEOUT = 10  # seconds: generous, a healthy run never comes close


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Herald:
    def __init__(self, env=None):
        if not HERALD_BIN.exists():
            raise RuntimeError(f"Herald binary not found at {HERALD_BIN}: run `cargo build` or set HERALD_BIN")
        last = None
        for _ in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD__")}
            child_env.update({
                "RUST_LOG": os.environ.get("HERALD_TEST_LOG", "warn"),
                "HERALD__SERVER__HOST": "127.0.0.1",
                "HERALD__SERVER__PORT": str(self.port),
                "HERALD__AUTH__JWT_SECRET": SECRET,
                "HERALD__API__KEYS": API_KEY,
                "HERALD__SERVER__SHUTDOWN_GRACE_SECS": "3",
                # its own fresh data directory: the embedded store on disk, as shipped
                "HERALD__STORAGE__DATA_DIR": tempfile.mkdtemp(prefix="herald-python-test-"),
            })
            child_env.update(env or {})
            self.log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(
                [str(HERALD_BIN), "--config", str(REPO_ROOT / "config.toml")],
                env=child_env, cwd=str(REPO_ROOT), stdout=self.log, stderr=subprocess.STDOUT,
            )
            try:
                self._wait_healthy()
                return
            except RuntimeError as e:
                last = e
                if "cannot listen" not in str(e):
                    raise
        raise last

    def logs(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def _wait_healthy(self):
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herald exited ({self.proc.returncode}) before serving:\n{self.logs()}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"herald did not answer /health within 30 s:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def notify(self, body, key=API_KEY):
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return requests.post(f"{self.url}/api/v1/notify", json=body, headers=headers, timeout=TIMEOUT)

    def emit(self, body, key=API_KEY):
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return requests.post(f"{self.url}/api/v1/emit", json=body, headers=headers, timeout=TIMEOUT)


def mint_token(claims, secret=SECRET, algorithm="HS256", ttl=3600):
    body = dict(claims)
    if "exp" not in body:
        body["exp"] = int(time.time()) + ttl
    if body.get("exp") is None:
        body.pop("exp")
    return jwt.encode(body, secret, algorithm=algorithm)


_user = [5000 + os.getpid() % 1000 * 100]


def unique_user():
    _user[0] += 1
    return _user[0]


@pytest.fixture(scope="session")
def herald():
    # python-engineio's polling client has a shutdown race: its write loop can exit without
    # POSTing the CLOSE packet, and disconnect() then waits for the pending long-poll GET, which
    # the server answers at the next ping. A short ping interval bounds that wait (seen with the
    # default 15 s; the server answers a CLOSE that does arrive at once).
    server = Herald(env={"HERALD__SOCKETIO__PING_INTERVAL_SECS": "2"})
    yield server
    server.stop()
