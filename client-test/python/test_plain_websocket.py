"""A plain WebSocket client with the `websockets` package, as a FastAPI-era Python service or
script has it: `?token=` in the URL, one JSON object per text frame, and a heartbeat loop that
sends {"type":"ping","timestamp","user_id","username"} and expects {"type":"pong",...}.
"""
import asyncio
import json
import time

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import TIMEOUT, mint_token, unique_user


def ws_url(herald, query=""):
    return f"ws://127.0.0.1:{herald.port}/ws/notifications{query}"


async def next_of(ws, kind):
    """The next frame whose type is `kind` (others are skipped)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("type") == kind:
            return frame


async def heartbeat(ws, user, every, beats, pongs):
    """The frontend's loop: a ping every `every` seconds; each pong is recorded."""
    for _ in range(beats):
        sent = int(time.time() * 1000)
        await ws.send(json.dumps({"type": "ping", "timestamp": sent, "user_id": user, "username": "py"}))
        pongs.append((sent, await next_of(ws, "pong")))
        await asyncio.sleep(every)


def test_welcome_notification_and_heartbeat_loop(herald):
    user = unique_user()

    async def main():
        async with connect(ws_url(herald, f"?token={mint_token({'user_id': user})}")) as ws:
            welcome = await next_of(ws, "welcome")
            assert welcome["data"]["user_id"] == str(user)
            r = await asyncio.to_thread(herald.notify, {"to": {"user": user}, "type": "grade", "message": "from python"})
            assert r.status_code == 202, r.text
            n = await next_of(ws, "grade")
            assert (n["message"], n["id"], n["channel"]) == ("from python", r.json()["id"], f"user_{user}")
            pongs = []
            await heartbeat(ws, user, 0.1, 3, pongs)
            assert len(pongs) == 3
            for sent, pong in pongs:
                assert pong["timestamp"] == sent
                assert abs(pong["server_time"] - sent) < 60_000

    asyncio.run(main())


def test_refusals_are_close_codes_with_the_spec_message(herald):
    expired = mint_token({"user_id": 1, "exp": int(time.time()) - 60})

    async def refused(query):
        async with connect(ws_url(herald, query)) as ws:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            return closed.value.rcvd.code, closed.value.rcvd.reason

    assert asyncio.run(refused("?token=garbage")) == (4002, "invalid token")
    assert asyncio.run(refused(f"?token={expired}")) == (4003, "token expired")


def test_auth_by_header_and_first_frame(herald):
    user = unique_user()
    token = mint_token({"user_id": user})

    async def main():
        async with connect(ws_url(herald), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert (await next_of(ws, "welcome"))["data"]["user_id"] == str(user)
        async with connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert (await next_of(ws, "welcome"))["data"]["user_id"] == str(user)
            await ws.send("not json")
            assert (await next_of(ws, "error"))["error"].startswith("invalid JSON")

    asyncio.run(main())
