"""State-change webhooks: signing, verification, and fire-and-forget delivery against a
real HTTP receiver on port 0."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from tunnel_env import TIMEOUT

from relay.oauth.signals import (
    SIGNATURE_HEADER,
    SignatureError,
    StateChange,
    WebhookConfig,
    WebhookSender,
    new_webhook_secret,
    sign,
    verify,
)

SECRET = "whsec_test-secret"
BODY = b'{"type":"connection.state_changed"}'


def test_signature_format_and_value() -> None:
    header = sign(SECRET, BODY, timestamp=1700000000)
    t, v1 = header.split(",")
    assert t == "t=1700000000"
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"
    assert verify(SECRET, BODY, header, now=1700000010) == 1700000000


def test_tampering_is_detected() -> None:
    header = sign(SECRET, BODY, timestamp=1700000000)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY + b" ", header, now=1700000000)
    with pytest.raises(SignatureError, match="does not match"):
        verify("whsec_other", BODY, header, now=1700000000)
    forged = header.replace("t=1700000000", "t=1700000100")  # a newer timestamp, old MAC
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, forged, now=1700000100)


def test_stale_and_future_timestamps_are_refused() -> None:
    header = sign(SECRET, BODY, timestamp=1700000000)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, BODY, header, now=1700000000 + 301)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, BODY, header, now=1700000000 - 301)
    assert verify(SECRET, BODY, header, now=1700000000 + 1000, tolerance_s=2000)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "t=1700000000", "v1=00"])
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=1700000000)


def test_any_of_several_signatures_may_match() -> None:
    good = sign(SECRET, BODY, timestamp=1700000000).split(",")[1]
    header = f"t=1700000000,v1={'0' * 64},{good}"
    assert verify(SECRET, BODY, header, now=1700000000) == 1700000000


def test_state_change_body_and_break_or_recovery() -> None:
    change = StateChange("acc_1", "con_1", "offline", "online", reason="invalid_client")
    doc = json.loads(change.body())
    assert doc["type"] == "connection.state_changed"
    assert doc["id"].startswith("evt_")
    assert doc["data"] == {
        "account_id": "acc_1",
        "connection_id": "con_1",
        "state": "offline",
        "previous_state": "online",
        "reason": "invalid_client",
    }
    assert change.is_break_or_recovery
    assert StateChange("a", "c", "online", "needs_authorization").is_break_or_recovery
    assert StateChange("a", "c", "needs_authorization", "offline").is_break_or_recovery
    assert not StateChange("a", "c", "online", "online").is_break_or_recovery
    assert not StateChange("a", "c", "offline", "offline").is_break_or_recovery
    assert not StateChange("a", "c", "needs_authorization", None).is_break_or_recovery
    assert new_webhook_secret().startswith("whsec_") and len(new_webhook_secret()) > 40


@dataclass
class Receiver:
    url: str = ""
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    received: list[tuple[bytes, str | None]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hang: asyncio.Event | None = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        rec.received.append((body, request.headers.get(SIGNATURE_HEADER)))
        rec.arrived.set()
        if rec.hang is not None:
            await rec.hang.wait()
        status = rec.statuses.pop(0) if rec.statuses else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    if rec.hang is not None:
        rec.hang.set()
    await runner.cleanup()


async def no_sleep(_: float) -> None:
    return None


async def test_delivery_is_signed_and_verifiable(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session)
        change = StateChange("acc_1", "con_1", "offline", "online", reason="boom")
        assert sender.send(receiver.url, SECRET, change)
        async with asyncio.timeout(TIMEOUT):
            await receiver.arrived.wait()
        await sender.aclose(TIMEOUT)
    body, header = receiver.received[0]
    assert body == change.body()
    verify(SECRET, body, header)


async def test_retries_are_bounded_and_4xx_is_final(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, WebhookConfig(attempts=3), sleep=no_sleep)
        change = StateChange("acc_1", "con_1", "offline", "online")
        receiver.statuses = [503, 500]
        assert await sender.deliver(receiver.url, SECRET, change) is True
        assert len(receiver.received) == 3
        receiver.received.clear()
        receiver.statuses = [503, 503, 503, 503]
        assert await sender.deliver(receiver.url, SECRET, change) is False
        assert len(receiver.received) == 3
        receiver.received.clear()
        receiver.statuses = [410]
        assert await sender.deliver(receiver.url, SECRET, change) is False
        assert len(receiver.received) == 1
        # Nobody listening: network errors are retried and then given up, no exception.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        slept: list[float] = []

        async def record(seconds: float) -> None:
            slept.append(seconds)

        counting = WebhookSender(session, WebhookConfig(attempts=3), sleep=record)
        assert await counting.deliver(f"http://127.0.0.1:{port}/hook", SECRET, change) is False
        assert slept == [1.0, 2.0]  # backoff between the three attempts


async def test_send_never_blocks_and_in_flight_is_bounded(receiver: Receiver) -> None:
    receiver.hang = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(
            session, WebhookConfig(max_in_flight=2, timeout_s=TIMEOUT, attempts=1)
        )
        change = StateChange("acc_1", "con_1", "offline", "online")
        assert sender.send(receiver.url, SECRET, change)
        assert sender.send(receiver.url, SECRET, change)
        assert not sender.send(receiver.url, SECRET, change)  # dropped, not queued
        assert sender.in_flight == 2
        async with asyncio.timeout(TIMEOUT):
            while len(receiver.received) < 2:
                receiver.arrived.clear()
                await receiver.arrived.wait()
        receiver.hang.set()
        await sender.aclose(TIMEOUT)
        assert sender.in_flight == 0


async def test_a_slow_receiver_times_out_and_close_cancels(receiver: Receiver) -> None:
    receiver.hang = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, WebhookConfig(timeout_s=0.2, attempts=1))
        change = StateChange("acc_1", "con_1", "offline", "online")
        async with asyncio.timeout(TIMEOUT):
            assert await sender.deliver(receiver.url, SECRET, change) is False
        slow = WebhookSender(session, WebhookConfig(timeout_s=60, attempts=1))
        assert slow.send(receiver.url, SECRET, change)
        async with asyncio.timeout(TIMEOUT):
            await slow.aclose(0.05)
        assert slow.in_flight == 0
