"""Browser-test fixtures: pytest-playwright driving Debian's Chromium (never a
downloaded browser), a fresh relay process per test, a sample on-premise service.
Screenshots of every open page (and a trace) land in tests/artifacts/ when a test
fails (``--screenshot``/``--tracing``/``--output`` in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_harness import ConsoleRelay, run_relay, run_service
from playwright.sync_api import Page, expect

# Debian's package; `make test` installs it (scripts/system-deps.sh).
CHROMIUM = os.environ.get("ONPREM_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
UI_TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make system-deps` (apt package chromium)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        # As root in a container: no sandbox. No calls home (this machine's network
        # is closed and Chromium would retry them all the time).
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture(autouse=True)
def _timeouts(request: pytest.FixtureRequest) -> None:
    """Bounded waits for the browser tests (the unit tests here open no browser)."""
    if "page" in request.fixturenames:
        page: Page = request.getfixturevalue("page")
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)


def _no_hidden_errors(relay: ConsoleRelay) -> None:
    """No page may have hidden a server error behind a friendly message."""
    errors = [
        line
        for line in relay.log_text().splitlines()
        if "internal_error" in line or "Traceback" in line
    ]
    assert not errors, "\n".join(errors)[-4000:]


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[ConsoleRelay]:
    """A relay with one account, acme (its API token in ``relay.api_token``)."""
    with run_relay(tmp_path / "relay") as running:
        yield running
    _no_hidden_errors(running)


@pytest.fixture
def empty_relay(tmp_path: Path) -> Iterator[ConsoleRelay]:
    """A relay as it first starts: no account yet."""
    with run_relay(tmp_path / "relay", account=False) as running:
        yield running
    _no_hidden_errors(running)


@pytest.fixture
def service() -> Iterator[int]:
    with run_service() as port:
        yield port
