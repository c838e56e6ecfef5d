"""Reconnect backoff: bounds, cap, reset, jitter; deterministic with a seeded rng."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backoff import Backoff


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_defaults_follow_the_design() -> None:
    # 1 s .. 60 s, doubling, equal jitter: delay n lies in [b/2, b], b = min(60, 2**n).
    values = delays(Backoff(rng=random.Random(7)), 12)
    for n, value in enumerate(values):
        base = min(60.0, 2.0**n)
        assert base / 2 <= value <= base
    assert max(values) <= 60.0


def test_no_jitter_is_plain_capped_exponential() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, factor=3.0, jitter=0.0)
    assert delays(backoff, 5) == [1.0, 3.0, 9.0, 10.0, 10.0]
    assert backoff.attempts == 5


def test_cap_holds_forever_without_overflow() -> None:
    backoff = Backoff(initial=0.5, maximum=60.0, factor=10.0, jitter=0.0)
    assert delays(backoff, 2000)[-1] == 60.0


def test_reset_starts_over() -> None:
    backoff = Backoff(jitter=0.0)
    assert delays(backoff, 4) == [1.0, 2.0, 4.0, 8.0]
    backoff.reset()
    assert backoff.attempts == 0
    assert delays(backoff, 2) == [1.0, 2.0]


def test_full_jitter_never_goes_below_the_floor() -> None:
    class Worst(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b  # the largest subtraction: delay would be 0

    backoff = Backoff(jitter=1.0, rng=Worst(), floor=0.25)
    assert delays(backoff, 5) == [0.25] * 5
    assert Backoff(jitter=1.0, rng=Worst()).next_delay() > 0


def test_floor_never_exceeds_the_cap() -> None:
    backoff = Backoff(initial=0.01, maximum=0.05, jitter=1.0, floor=1.0)
    assert all(d <= 0.05 for d in delays(backoff, 10))


def test_seeded_rng_is_deterministic() -> None:
    first = delays(Backoff(rng=random.Random(42)), 20)
    second = delays(Backoff(rng=random.Random(42)), 20)
    other = delays(Backoff(rng=random.Random(43)), 20)
    assert first == second
    assert first != other


def test_jitter_spreads_values() -> None:
    rng = random.Random(1)
    # Many agents at the same attempt (the 6th: base 32 s) after a relay restart.
    values = []
    for _ in range(500):
        backoff = Backoff(rng=rng)
        values.append(delays(backoff, 6)[-1])
    assert min(values) >= 16.0
    assert max(values) <= 32.0
    assert max(values) - min(values) > 12.0  # spread over most of [16, 32]
    assert statistics.pstdev(values) > 3.0
    assert len({round(v, 3) for v in values}) > 400


@settings(max_examples=100, deadline=None)
@given(
    initial=st.floats(0.001, 10.0),
    extra=st.floats(0.0, 100.0),
    factor=st.floats(1.0, 5.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
)
def test_bounds_property(
    initial: float, extra: float, factor: float, jitter: float, seed: int, n: int
) -> None:
    maximum = initial + extra
    backoff = Backoff(initial, maximum, factor, jitter, random.Random(seed))
    floor = min(backoff.floor, maximum)
    base = initial
    for value in delays(backoff, n):
        assert floor <= value <= maximum
        assert value <= max(base, floor)
        assert value >= min(base * (1 - jitter), maximum) or value == floor
        base = min(maximum, base * factor)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": -1},
        {"initial": 10, "maximum": 5},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"floor": -1},
        {"initial": float("nan")},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
