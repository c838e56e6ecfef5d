"""Processes and servers for the console's browser tests, driven synchronously (the
Playwright sync API cannot share pytest-asyncio's event loop): a real
``onprem-relay serve`` on a fresh directory, the agent as ``onprem-agent run`` with
the agent.yaml and token the console showed, a sample on-premise HTTP service, and
oidc-provider-mock as the authorization server.

Every wait is bounded; the only sleep is the interval of the bounded ``eventually``
poll."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml
from playwright.sync_api import Page, expect

T = TypeVar("T")
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_BIN = Path(sys.executable).parent


def eventually(probe: Callable[[], T | None], what: str, timeout: float = STARTUP_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A port free a moment ago: the relay's public URL and SSH port must be known
    before it starts (they go into OAuth redirect URIs and agent.yaml files)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONPREM_")}
    env.pop("PYTHONWARNINGS", None)
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


@dataclass
class ConsoleRelay:
    url: str
    api_token: str
    directory: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The REST API as the account, for checking what the console did."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.api_token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=STARTUP_TIMEOUT) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def setup_url(self) -> str:
        """The first-run link the relay logs when it has no account."""

        def find() -> str | None:
            for line in self.log_text().splitlines():
                if '"console_setup"' in line:
                    return str(json.loads(line)["setup_url"])
            return None

        return eventually(find, "the console_setup line in the relay's log")


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool | None:
    if proc.poll() is not None:
        raise AssertionError(f"the relay exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return True if response.status == 200 else None
    except OSError:
        return None


@contextmanager
def run_relay(directory: Path, *, account: bool = True, **env: str) -> Iterator[ConsoleRelay]:
    """``onprem-relay init`` + ``accounts create acme`` (unless ``account`` is false:
    a relay as it first starts) + ``serve`` on loopback ports."""
    directory.mkdir(parents=True, exist_ok=True)
    http_port, ssh_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    config = directory / "relay.yaml"
    environment = child_env(
        {
            "ONPREM_RELAY_CONFIG": str(config),
            "ONPREM_RELAY_HTTP__LISTEN": f"127.0.0.1:{http_port}",
            "ONPREM_RELAY_HTTP__PUBLIC_URL": url,
            "ONPREM_RELAY_SSH__LISTEN": f"127.0.0.1:{ssh_port}",
            # The test's authorization server and services run on loopback.
            "ONPREM_RELAY_CLOUD__DENY_PRIVATE_NETWORKS": "false",
            **env,
        }
    )
    relay_bin = str(_BIN / "onprem-relay")
    subprocess.run(
        [relay_bin, "init", "--dir", str(directory)],
        env=environment,
        check=True,
        capture_output=True,
        timeout=STARTUP_TIMEOUT,
    )
    api_token = ""
    if account:
        created = subprocess.run(
            [relay_bin, "accounts", "create", "acme", "--json"],
            env=environment,
            check=True,
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
        )
        api_token = json.loads(created.stdout)["api_token"]
    log = directory / "relay.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [relay_bin, "serve"], env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        eventually(lambda: _ready(url, proc, log), "the relay's /readyz")
        yield ConsoleRelay(url, api_token, directory, proc, log)
    finally:
        stop(proc)


@contextmanager
def run_agent(directory: Path, agent_yaml: str, token: str, allow: list[str]) -> Iterator[Path]:
    """``onprem-agent run`` with the agent.yaml the console showed, its ``allow`` list
    filled in as IT would, and the token in a 0600 file."""
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "agent.token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n", encoding="utf-8")
    config = yaml.safe_load(agent_yaml)
    config["allow"] = allow
    config["token_file"] = str(token_file)
    config["backoff_initial_s"] = 0.1
    config["backoff_max_s"] = 0.5
    config_file = directory / "agent.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = directory / "agent.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(_BIN / "onprem-agent"), "run", "--config", str(config_file)],
            env=child_env({}),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        stop(proc)


class _Service(BaseHTTPRequestHandler):
    """The sample on-premise API: /health answers {"status": "ok"}, /broken 500."""

    def do_GET(self) -> None:
        if self.path == "/health":
            status, body = 200, {"status": "ok"}
        elif self.path == "/broken":
            status, body = 500, {"status": "down"}
        else:
            status, body = 404, {"error": "no such path"}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def run_service() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)


# -- browser helpers --------------------------------------------------------------

_UNLABELLED = """() => Array.from(document.querySelectorAll('input, select, textarea'))
    .filter(el => el.type !== 'hidden' && el.labels.length === 0 && !el.ariaLabel)
    .map(el => el.name || el.id || el.outerHTML)"""


def assert_labelled(page: Page) -> None:
    """Every form control on the page has a label."""
    assert page.evaluate(_UNLABELLED) == [], page.url


def sign_in(page: Page, relay: ConsoleRelay) -> None:
    page.goto(relay.url + "/console/")
    page.get_by_label("API token").fill(relay.api_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Connections", exact=True)).to_be_visible()
