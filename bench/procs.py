"""Child processes of a benchmark: started with their output in a log file, waited for by
a log line or a port, and always stopped (SIGTERM, then SIGKILL) by their own pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


class BenchError(Exception):
    """A scenario could not be set up; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """(status, body) of one GET; status 0 and the error text for a transport failure."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError) as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except (OSError, urllib.error.URLError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


class Proc:
    """One child process; stdout and stderr go to ``log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._logf = log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}; last lines of "
                f"{self.log}:\n{self.tail()}"
            )

    def wait_for(self, what: str, ready: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Poll ``ready()`` until it returns something truthy; fail if we die first."""
        deadline = time.monotonic() + timeout
        while True:
            value = ready()
            if value:
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {what} after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        self.wait_for(f"listener on 127.0.0.1:{port}", lambda: port_open(port), timeout)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``event`` (structlog JSON logging)."""
        out = []
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            if f'"{event}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and obj.get("event") == event:
                    out.append(obj)
        return out

    def wait_event(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        found = self.wait_for(f"'{event}' log line", lambda: self.log_events(event), timeout)
        return found[-1]  # type: ignore[no-any-return]

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        self._logf.close()
        return self.popen.returncode


class Procs:
    """Every process a run started; ``stop_all`` stops them newest first."""

    def __init__(self) -> None:
        self.items: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], log: Path, **kwargs: Any) -> Proc:
        proc = Proc(name, argv, log, **kwargs)
        self.items.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            proc.stop()
        self.items.clear()


def run(argv: Sequence[str], *, timeout: float = 60.0, **kwargs: Any) -> str:
    """Run a short command; its stdout, or BenchError with its stderr."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{argv[0]}: {exc}") from None
    if res.returncode != 0:
        raise BenchError(
            f"{' '.join(argv[:4])} exited with {res.returncode}: {res.stderr.strip()[-600:]}"
        )
    return res.stdout


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")
