"""Reconnect delays: capped exponential backoff with jitter (pure, no clock, no sleep).

The n-th delay (from 0) is drawn from ``[b * (1 - jitter), b]`` with
``b = min(maximum, initial * factor**n)``: ``jitter=0.5`` is "equal jitter" (half
fixed, half random), ``1.0`` is "full jitter", ``0.0`` none. Jitter spreads the
reconnects of many agents after a relay restart; the floor keeps full jitter from
turning into a busy loop.
"""

from __future__ import annotations

import random

_DEFAULT_INITIAL = 1.0
_DEFAULT_MAXIMUM = 60.0
_DEFAULT_FACTOR = 2.0
_DEFAULT_JITTER = 0.5
_DEFAULT_FLOOR = 0.1


class Backoff:
    """Delays for successive failed attempts; ``reset()`` after a healthy session."""

    __slots__ = ("_base", "_rng", "attempts", "factor", "floor", "initial", "jitter", "maximum")

    def __init__(
        self,
        initial: float = _DEFAULT_INITIAL,
        maximum: float = _DEFAULT_MAXIMUM,
        factor: float = _DEFAULT_FACTOR,
        jitter: float = _DEFAULT_JITTER,
        rng: random.Random | None = None,
        *,
        floor: float = _DEFAULT_FLOOR,
    ) -> None:
        if not initial > 0:
            raise ValueError(f"initial must be > 0, not {initial!r}")
        if not maximum >= initial:
            raise ValueError(f"maximum ({maximum!r}) must be >= initial ({initial!r})")
        if not factor >= 1:
            raise ValueError(f"factor must be >= 1, not {factor!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be within 0..1, not {jitter!r}")
        if not floor >= 0:
            raise ValueError(f"floor must be >= 0, not {floor!r}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        # A floor above the cap would break "never above maximum".
        self.floor = min(floor, maximum)
        # Not for secrets: only spreads reconnect times.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._base = initial
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; grows until ``maximum``."""
        base = self._base
        delay = base - self._rng.uniform(0.0, base * self.jitter)
        # Grow by multiplication, not factor**attempts: no float overflow, ever.
        self._base = min(self.maximum, base * self.factor)
        self.attempts += 1
        return min(self.maximum, max(self.floor, delay))

    def reset(self) -> None:
        """Start again from ``initial`` (the last session was healthy)."""
        self._base = self.initial
        self.attempts = 0
