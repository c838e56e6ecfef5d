"""Connection state-change webhooks: the signed JSON a relay POSTs to an account's URL
when a connection breaks (offline, needs_authorization) or recovers (online).

Signature (the scheme of Stripe and Slack, so receivers know it): header
``X-Onprem-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>``.
A receiver checks the HMAC in constant time and refuses timestamps outside a
tolerance window (replays). Several ``v1=`` entries may appear (secret rotation).

Delivery never blocks the request path: ``WebhookSender.send`` schedules a task and
returns; each delivery has a timeout and a bounded number of attempts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp

from relay.errors import RelayError
from relay.routing.policy import backoff_delay
from shared.logging import get_logger

log = get_logger("relay.oauth.signals")

SIGNATURE_HEADER = "X-Onprem-Signature"
EVENT_TYPE = "connection.state_changed"
DEFAULT_TOLERANCE_S = 300.0
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_INITIAL_S = 1.0
DEFAULT_BACKOFF_MAX_S = 30.0
DEFAULT_MAX_IN_FLIGHT = 100
SECRET_PREFIX = "whsec_"
BROKEN_STATES = frozenset({"offline", "needs_authorization"})


class SignatureError(RelayError, ValueError):
    """A webhook signature is missing, malformed, wrong or too old."""


def new_webhook_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The ``X-Onprem-Signature`` value for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={_digest(secret, ts, body)}"


def verify(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Check a signature header against ``body``; the signed timestamp if it is good,
    ``SignatureError`` otherwise."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("the signature timestamp is not a number") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("the signature header needs t= and v1=")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError("the signature timestamp is outside the tolerance window")
    expected = _digest(secret, timestamp, body)
    # Compare against every candidate, always, so timing says nothing about which.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("the signature does not match the body")
    return timestamp


@dataclass(frozen=True)
class StateChange:
    """One connection state change, as sent."""

    account_id: str
    connection_id: str
    state: str
    previous_state: str | None
    reason: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: "evt_" + secrets.token_hex(12))

    @property
    def is_break_or_recovery(self) -> bool:
        """Worth a webhook: broke (to offline/needs_authorization from another state)
        or recovered (to online from a broken state). A new connection (no previous
        state) is neither."""
        if self.previous_state is None or self.state == self.previous_state:
            return False
        if self.state in BROKEN_STATES:
            return True
        return self.state == "online" and self.previous_state in BROKEN_STATES

    def body(self) -> bytes:
        doc = {
            "id": self.id,
            "type": EVENT_TYPE,
            "created_at": self.at.isoformat(),
            "data": {
                "account_id": self.account_id,
                "connection_id": self.connection_id,
                "state": self.state,
                "previous_state": self.previous_state,
                "reason": self.reason,
            },
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class WebhookConfig:
    timeout_s: float = DEFAULT_TIMEOUT_S
    attempts: int = DEFAULT_ATTEMPTS
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    user_agent: str = "onprem-relay-webhook"


class WebhookSender:
    """Fire-and-forget signed deliveries over a session the caller owns (in the relay:
    one with the SSRF guard). ``aclose`` waits a bounded time for what is in flight."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: WebhookConfig | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self.config = config or WebhookConfig()
        self._sleep = sleep
        self._tasks: set[asyncio.Task[bool]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def send(self, url: str, secret: str | bytes, change: StateChange) -> bool:
        """Schedule a delivery and return at once. False: dropped, because too many are
        in flight (a slow receiver must not grow memory without bound)."""
        if len(self._tasks) >= self.config.max_in_flight:
            log.warning(
                "webhook_dropped",
                connection_id=change.connection_id,
                host=_host(url),
                in_flight=len(self._tasks),
            )
            return False
        task = asyncio.get_running_loop().create_task(
            self.deliver(url, secret, change), name=f"webhook-{change.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def deliver(self, url: str, secret: str | bytes, change: StateChange) -> bool:
        """One delivery with retries: True once a 2xx came back. A 4xx other than 408
        and 429 is final (the receiver refuses it; retrying changes nothing)."""
        body = change.body()
        host = _host(url)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        for attempt in range(1, self.config.attempts + 1):
            status: int | None = None
            try:
                # Signed per attempt: a late retry still passes the receiver's window.
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": self.config.user_agent,
                    SIGNATURE_HEADER: sign(secret, body),
                    "X-Onprem-Event-Id": change.id,
                }
                async with self._session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info(
                    "webhook_attempt_failed",
                    connection_id=change.connection_id,
                    host=host,
                    attempt=attempt,
                    error=type(exc).__name__,
                )
            else:
                if 200 <= status < 300:
                    log.info(
                        "webhook_delivered",
                        connection_id=change.connection_id,
                        host=host,
                        state=change.state,
                        attempt=attempt,
                    )
                    return True
                log.info(
                    "webhook_attempt_failed",
                    connection_id=change.connection_id,
                    host=host,
                    attempt=attempt,
                    status=status,
                )
                if 400 <= status < 500 and status not in (408, 429):
                    break
            if attempt < self.config.attempts:
                await self._sleep(
                    backoff_delay(
                        attempt,
                        initial=self.config.backoff_initial_s,
                        maximum=self.config.backoff_max_s,
                    )
                )
        log.warning(
            "webhook_failed",
            connection_id=change.connection_id,
            host=host,
            state=change.state,
        )
        return False

    async def aclose(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` for deliveries in flight, then cancel the rest."""
        pending = set(self._tasks)
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)


def _host(url: str) -> str:
    return urlsplit(url).hostname or "(no host)"
