"""Classifying upstream responses (design section 6): auth errors, rate limits,
Retry-After and backoff, ping verdicts. Pure functions over (status, headers, parsed
body); the executor does the I/O and asks these what to do.

A ``*_path`` with an empty ``*_values`` list matches when the path names a non-empty
value (the field's presence is the signal); otherwise it matches when any value found
at the path equals one of the configured values exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from relay.models.connection import HttpAuth, Ping, RateLimit
from relay.routing.paths import PathError, body_values

DEFAULT_AUTH_FAIL_STATUS = 401
DEFAULT_RATE_LIMIT_STATUS = 429


def path_matches(body: Any, path: str | None, wanted: Sequence[str]) -> bool:
    """Whether the value(s) at ``path`` in ``body`` say yes (see module docstring).
    A malformed path never matches (it is a configuration mistake, not a signal)."""
    if not path:
        return False
    try:
        found = body_values(body, path)
    except PathError:
        return False
    if not wanted:
        return any(v not in ("", "null") for v in found)
    return any(v in wanted for v in found)


def first_value(body: Any, path: str | None) -> str | None:
    if not path:
        return None
    try:
        found = body_values(body, path)
    except PathError:
        return None
    return next((v for v in found if v not in ("", "null")), None)


def is_auth_error(auth: HttpAuth, status: int, body: Any) -> bool:
    """The configured status (default 401), or a ``fail_path`` match even on a 2xx."""
    if status == (auth.fail_status_code or DEFAULT_AUTH_FAIL_STATUS):
        return True
    return path_matches(body, auth.fail_path, auth.fail_values)


def is_rate_limited(rate_limit: RateLimit, status: int, body: Any) -> bool:
    """The configured status (default 429), or a throttle value inside any response."""
    if status == (rate_limit.fail_status_code or DEFAULT_RATE_LIMIT_STATUS):
        return True
    return path_matches(body, rate_limit.fail_path, rate_limit.fail_values)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP date (RFC
    9110 10.2.3). ``None`` when absent or unreadable; never negative."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    try:
        seconds = float(v)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return max(0.0, seconds)
        return None
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, *, initial: float, maximum: float) -> float:
    """Exponential backoff for the ``attempt``-th retry (1-based), capped. No jitter:
    one relay retrying one connection has nobody to de-synchronise from, and a
    deterministic schedule keeps the deadline arithmetic honest."""
    return float(min(maximum, initial * 2.0 ** max(0, attempt - 1)))


def rate_limit_wait(
    retry_after: str | None,
    *,
    attempt: int,
    remaining: float,
    backoff_initial: float,
    backoff_max: float,
    retry_after_max: float,
    now: datetime | None = None,
) -> float | None:
    """How long to wait before retry number ``attempt`` (1-based): the Retry-After
    value when there is a readable one, else exponential backoff. ``None``: give up,
    because the wait would not end before the request's deadline (``remaining``
    seconds) or the server asks for more than ``retry_after_max``."""
    wait = parse_retry_after(retry_after, now=now)
    if wait is None:
        wait = backoff_delay(attempt, initial=backoff_initial, maximum=backoff_max)
    elif wait > retry_after_max:
        return None
    if wait >= remaining:
        return None
    return wait


@dataclass(frozen=True)
class PingVerdict:
    ok: bool
    message: str | None = None


def ping_verdict(ping: Ping, status: int, body: Any) -> PingVerdict:
    """Did Test connection pass? A ``fail_path`` match fails even on a 2xx; with a
    ``success_path`` a 2xx passes only when its value is one of ``success_values``;
    without one, any 2xx passes. ``error_path`` picks the message shown on failure."""
    ok2xx = 200 <= status < 300

    def failed(default: str) -> PingVerdict:
        picked = first_value(body, ping.error_path)
        return PingVerdict(False, picked if picked is not None else default)

    if path_matches(body, ping.fail_path, ping.fail_values):
        return failed(f"ping response matched fail_path {ping.fail_path!r} (HTTP {status})")
    if not ok2xx:
        return failed(f"ping answered HTTP {status}")
    if ping.success_path and not path_matches(body, ping.success_path, ping.success_values):
        found = first_value(body, ping.success_path)
        return failed(
            f"ping response has {found!r} at success_path {ping.success_path!r}, "
            f"expected one of {list(ping.success_values) or ['any value']}"
        )
    return PingVerdict(True)
