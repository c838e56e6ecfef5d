"""Process-level harness for the end-to-end tests: child processes whose stderr JSON
lines are parsed as they arrive, bounded waits on log events and conditions, the relay
and agent set-up, HTTP round trips with checksums, and a network-namespace helper.

Every wait here has a timeout; nothing sleeps to synchronise (the only sleep is the
interval of the bounded ``eventually`` poll)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SHA_HEADER = "X-Body-SHA256"
STARTUP_TIMEOUT = 30.0  # a Python process on a loaded 2-core machine
CLI_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
MIB = 1024 * 1024

_BIN = Path(sys.executable).parent
E2E_DIR = Path(__file__).resolve().parent


def bin_path(name: str) -> str:
    candidate = _BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any ONPREM_* setting (no stray config/token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONPREM_")}
    env.pop("PYTHONWARNINGS", None)
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for the one test that needs a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- child processes ---------------------------------------------------------------


class Proc:
    """A child process; its stderr (and optionally stdout) is read line by line as it
    comes, JSON lines are parsed into ``events``. Waits wake on every new line."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, argv: Sequence[str]) -> None:
        self.name = name
        self.proc = proc
        self.argv = list(argv)
        self.lines: list[str] = []  # stderr, raw
        self.events: list[dict[str, Any]] = []  # stderr, parsed JSON objects
        self.stdout_lines: list[str] = []
        self.exit_time: float | None = None
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read(proc.stderr, self.lines, True), name=f"{name}-err")
        ]
        if proc.stdout is not None:
            self._readers.append(
                asyncio.create_task(
                    self._read(proc.stdout, self.stdout_lines, False), name=f"{name}-out"
                )
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _read(self, stream: asyncio.StreamReader | None, out: list[str], parse: bool) -> None:
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):  # a huge line: keep a prefix
                raw = (await stream.read(65536)) or b""
            if not raw:
                break
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            out.append(text)
            if parse and text.startswith("{"):
                with contextlib.suppress(ValueError):
                    obj = json.loads(text)
                    if isinstance(obj, dict):
                        self.events.append(obj)
            self._notify()
        self._notify()

    @property
    def _eof(self) -> bool:
        return all(t.done() for t in self._readers)

    def mark(self) -> int:
        """Index of the next event: pass as ``after`` to wait only for newer ones."""
        return len(self.events)

    def find(
        self, event: str, *, after: int = 0, where: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for ev in self.events[after:]:
            if ev.get("event") != event:
                continue
            if where and any(ev.get(k) != v for k, v in where.items()):
                continue
            out.append(ev)
        return out

    def count(self, event: str, *, after: int = 0, where: Mapping[str, Any] | None = None) -> int:
        return len(self.find(event, after=after, where=where))

    def tail(self, n: int = 40) -> str:
        lines = self.lines[-n:]
        out = "\n".join(f"    {line}" for line in lines)
        if self.stdout_lines:
            out += "\n  stdout:\n" + "\n".join(f"    {x}" for x in self.stdout_lines[-10:])
        return f"--- {self.name} (pid {self.pid}, rc {self.returncode}) stderr tail ---\n{out}"

    async def _wait_change(self, deadline: float) -> None:
        changed = self._changed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            await changed.wait()

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        *,
        timeout: float,
        what: str,
    ) -> Any:
        """Wait (bounded) until ``predicate()`` is truthy, re-checking on every line."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self._eof:
                await self._reap()
                raise AssertionError(
                    f"{self.name} exited (rc {self.returncode}) before {what}\n{self.tail()}"
                )
            try:
                await self._wait_change(deadline)
            except TimeoutError:
                raise AssertionError(
                    f"{self.name}: no {what} within {timeout:.1f} s\n{self.tail()}"
                ) from None

    async def wait_event(
        self,
        event: str,
        *,
        timeout: float,
        after: int = 0,
        where: Mapping[str, Any] | None = None,
        count: int = 1,
    ) -> dict[str, Any]:
        """The ``count``-th log event named ``event`` (fields ``where``) at or after index
        ``after``; waits for it, bounded."""
        desc = f"{count} x event {event!r}" + (f" with {dict(where)}" if where else "")

        def found() -> dict[str, Any] | None:
            hits = self.find(event, after=after, where=where)
            return hits[count - 1] if len(hits) >= count else None

        result: dict[str, Any] = await self.wait_for(found, timeout=timeout, what=desc)
        return result

    async def wait_stdout(
        self, predicate: Callable[[str], bool], *, timeout: float, what: str
    ) -> str:
        def found() -> str | None:
            return next((x for x in self.stdout_lines if predicate(x)), None)

        result: str = await self.wait_for(found, timeout=timeout, what=what)
        return result

    async def wait_line(
        self, predicate: Callable[[str], bool], *, timeout: float, what: str
    ) -> str:
        def found() -> str | None:
            return next((x for x in self.lines if predicate(x)), None)

        result: str = await self.wait_for(found, timeout=timeout, what=what)
        return result

    async def _reap(self) -> None:
        async with asyncio.timeout(KILL_TIMEOUT):
            await self.proc.wait()
            await asyncio.gather(*self._readers, return_exceptions=True)
        if self.exit_time is None:
            self.exit_time = time.monotonic()

    async def wait_exit(self, timeout: float) -> int:
        """The exit code; fails the test (with the log tail) if it takes longer."""
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name} still running after {timeout:.1f} s\n{self.tail()}"
            ) from None
        await self._reap()
        assert self.returncode is not None
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap, bounded."""
        self.signal(signal.SIGKILL)
        await self._reap()


class Procs:
    """Every child process a test started; ``close()`` (fixture teardown) kills them all."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: bool = False,
    ) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else child_env(),
            cwd=cwd,
            limit=1 << 20,
            start_new_session=True,  # no terminal signals from the test's tty
        )
        p = Proc(name, proc, argv)
        self.all.append(p)
        return p

    def report(self) -> str:
        return "\n".join(p.tail(60) for p in self.all)

    async def close(self) -> None:
        errors = []
        for p in reversed(self.all):
            try:
                await p.kill()
            except Exception as exc:  # keep killing the others
                errors.append(f"{p.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not reap: " + "; ".join(errors))


@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(
                f"{' '.join(self.argv)}: stdout is not JSON:\n{self.stdout}\n{self.stderr}"
            ) from None


async def run_cli(
    *args: str,
    timeout: float = CLI_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> CliResult:
    """Run a command to completion (bounded; killed on timeout or cancellation)."""
    argv = list(args)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else child_env(),
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            async with asyncio.timeout(KILL_TIMEOUT):
                await proc.communicate()
    assert proc.returncode is not None
    result = CliResult(
        argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}"
        )
    return result


async def eventually(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> Any:
    """Poll ``check()`` (a coroutine function) until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.1f} s: {what} (last: {last!r})")
        await asyncio.sleep(interval)  # poll interval of a bounded wait


async def connect_fails(host: str, port: int, timeout: float = 5.0) -> OSError:
    """Assert a direct TCP connect to ``host:port`` fails (refused, unreachable or timed
    out, bounded); return the error."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:  # TimeoutError is an OSError too
        return exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise AssertionError(f"{host}:{port} is reachable directly")


def nonjson_lines(lines: Sequence[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:
            pass
        out.append(line)
    return out


# -- relay -------------------------------------------------------------------------

RELAY_SETTINGS: dict[str, Any] = {
    "ssh": {
        "keepalive_interval_s": 1,
        "keepalive_count_max": 3,
        "token_recheck_interval_s": 0.5,
        "stream_open_timeout_s": 5,
        "login_timeout_s": 10,
    },
    "http": {"listen": "127.0.0.1:0"},
    "log": {"level": "info", "format": "json"},
    "shutdown_timeout_s": 1,
}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass
class AgentCreds:
    id: str
    token: str
    host_key: str
    name: str


@dataclass
class RelayTemplate:
    """A relay directory made once per session by the CLI (init, one account, one
    agent); each test copies it, so each test has its own database and config."""

    dir: Path
    account: dict[str, Any]
    agent: AgentCreds


def make_template(dir_: Path) -> RelayTemplate:
    relay = bin_path("onprem-relay")

    def run(*args: str) -> str:
        res = subprocess.run(
            [relay, *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=child_env(),
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise RuntimeError(f"onprem-relay {' '.join(args)}: rc {res.returncode}\n{res.stderr}")
        return res.stdout

    run("init", "--dir", str(dir_))
    config = str(dir_ / "relay.yaml")
    account = json.loads(run("accounts", "create", "e2e", "--json", "--config", config))
    agent = json.loads(
        run("agents", "create", "--account", "e2e", "e2e-agent", "--json", "--config", config)
    )
    assert agent["id"].startswith("agt_") and agent["host_key"].startswith("SHA256:"), agent
    creds = AgentCreds(agent["id"], agent["token"], agent["host_key"], "e2e-agent")
    return RelayTemplate(dir=dir_, account=account, agent=creds)


@dataclass
class Relay:
    dir: Path
    config_path: Path
    agent: AgentCreds
    procs: Procs
    proc: Proc | None = None
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 0
    http_port: int = 0
    forward_ports: list[int] = field(default_factory=list)
    host_key: str = ""
    starts: int = 0

    @property
    def ssh_address(self) -> str:
        return f"{self.ssh_host}:{self.ssh_port}"

    def load_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def update_config(self, settings: Mapping[str, Any]) -> None:
        cfg = _merge(self.load_config(), settings)
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    def set_forwards(self, forwards: Sequence[tuple[str, str]]) -> None:
        """``[(agent_id, "host:port"), ...]``: loopback listeners on 127.0.0.1:0."""
        cfg = self.load_config()
        cfg["local_forwards"] = [
            {"listen": "127.0.0.1:0", "agent_id": a, "target": t} for a, t in forwards
        ]
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    async def cli(self, *args: str, check: bool = True) -> CliResult:
        return await run_cli(
            bin_path("onprem-relay"), *args, "--config", str(self.config_path), check=check
        )

    async def start(self, *, timeout: float = STARTUP_TIMEOUT) -> Proc:
        """``onprem-relay serve`` and wait for ``relay_listening``."""
        assert self.proc is None or self.proc.returncode is not None, "relay already running"
        self.starts += 1
        self.proc = await self.procs.start(
            f"relay#{self.starts}",
            [bin_path("onprem-relay"), "serve", "--config", str(self.config_path)],
        )
        ev = await self.proc.wait_event("relay_listening", timeout=timeout)
        self.ssh_port = int(ev["ssh_port"])
        self.http_port = int(ev["http_port"])
        self.forward_ports = [int(p) for p in ev["local_forward_ports"]]
        self.host_key = str(ev["host_key"])
        assert self.host_key == self.agent.host_key, (self.host_key, self.agent.host_key)
        return self.proc

    @property
    def forward_url(self) -> str:
        assert self.forward_ports, "no local forward configured"
        return f"http://127.0.0.1:{self.forward_ports[0]}"

    async def agents_json(self) -> list[dict[str, Any]]:
        data = (await self.cli("agents", "list", "--json")).json()
        if isinstance(data, dict) and "agents" in data:
            data = data["agents"]
        assert isinstance(data, list), data
        return data

    async def agent_json(self, agent_id: str | None = None) -> dict[str, Any] | None:
        agent_id = agent_id or self.agent.id
        return next((a for a in await self.agents_json() if a.get("id") == agent_id), None)

    async def wait_sessions(self, n: int, *, timeout: float = 15.0) -> dict[str, Any]:
        """Poll ``agents list --json`` until the agent has exactly ``n`` sessions (and
        the matching status)."""

        async def check() -> dict[str, Any] | None:
            a = await self.agent_json()
            if a is None:
                return None
            want = "online" if n else "offline"
            return a if len(a.get("sessions", [])) == n and a.get("status") == want else None

        result: dict[str, Any] = await eventually(
            check, timeout=timeout, what=f"agents list shows {n} session(s) for {self.agent.id}"
        )
        return result


def copy_template(template: RelayTemplate, dest: Path) -> Path:
    """Copy the template's files to ``dest``, pointing the config's paths there."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    for item in template.dir.iterdir():
        if item.is_file():  # the database with any -wal/-shm: nobody writes it now
            shutil.copy2(item, dest / item.name)
    config = dest / "relay.yaml"
    text = config.read_text(encoding="utf-8").replace(str(template.dir), str(dest))
    config.write_text(text, encoding="utf-8")
    return config


async def make_relay(
    template: RelayTemplate,
    dest: Path,
    procs: Procs,
    *,
    ssh_listen: str = "127.0.0.1:0",
    forwards: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    start: bool = True,
) -> Relay:
    """A relay of its own for one test: config copied from the template, ssh/http on
    ``ssh_listen``/127.0.0.1:0, short keepalives, one local forward per target in
    ``forwards`` (to the template's agent), then ``serve`` and ``relay_listening``."""
    config = copy_template(template, dest)
    relay = Relay(dir=dest, config_path=config, agent=template.agent, procs=procs)
    relay.update_config(_merge(RELAY_SETTINGS, {"ssh": {"listen": ssh_listen}}))
    if settings:
        relay.update_config(settings)
    relay.set_forwards([(template.agent.id, t) for t in forwards])
    relay.ssh_host = ssh_listen.rsplit(":", 1)[0]
    if start:
        await relay.start()
    return relay


# -- agent -------------------------------------------------------------------------

AGENT_SETTINGS: dict[str, Any] = {
    "log": {"level": "info", "format": "json"},
    "backoff_initial_s": 0.1,
    "backoff_max_s": 1,
    "keepalive_interval_s": 1,
    "keepalive_count_max": 3,
    "connect_timeout_s": 5,
    "dial_timeout_s": 5,
    "drain_timeout_s": 1,
}


def write_agent_files(
    dir_: Path,
    *,
    relay_address: str,
    host_key: str,
    agent_id: str,
    token: str,
    allow: Sequence[str],
    settings: Mapping[str, Any] | None = None,
) -> Path:
    dir_.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file = dir_ / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(token_file, stat.S_IRUSR | stat.S_IWUSR)
    cfg: dict[str, Any] = {
        "relay": {"address": relay_address, "host_key": host_key},
        "agent_id": agent_id,
        "token_file": str(token_file),
        "allow": list(allow),
        **AGENT_SETTINGS,
    }
    cfg = _merge(cfg, settings or {})
    path = dir_ / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


async def start_agent(
    procs: Procs,
    relay: Relay,
    dir_: Path,
    *,
    allow: Sequence[str],
    name: str = "agent",
    relay_address: str | None = None,
    host_key: str | None = None,
    token: str | None = None,
    settings: Mapping[str, Any] | None = None,
    netns: str | None = None,
    wait_up: bool = True,
    timeout: float = STARTUP_TIMEOUT,
) -> Proc:
    """Write agent.yaml + token (0600) in ``dir_``, start ``onprem-agent run`` (inside
    ``netns`` if given) and, unless ``wait_up`` is false, wait for ``tunnel_up``."""
    config = write_agent_files(
        dir_,
        relay_address=relay_address or relay.ssh_address,
        host_key=host_key or relay.agent.host_key,
        agent_id=relay.agent.id,
        token=token or relay.agent.token,
        allow=allow,
        settings=settings,
    )
    argv = [bin_path("onprem-agent"), "run", "--config", str(config)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await procs.start(name, argv)
    if wait_up:
        await proc.wait_event("tunnel_up", timeout=timeout)
    return proc


RelayFactory = Callable[..., Awaitable[Relay]]
AgentFactory = Callable[..., Awaitable[Proc]]


# -- HTTP through the tunnel --------------------------------------------------------


def client_session(total_timeout: float = 30.0) -> aiohttp.ClientSession:
    """A client whose every request is a new TCP connection (= a new stream)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0),
        timeout=aiohttp.ClientTimeout(total=total_timeout),
    )


async def echo_roundtrip(session: aiohttp.ClientSession, base: str, size: int) -> None:
    """POST ``size`` random bytes to /echo; the target's hash and length must match."""
    body = os.urandom(size)
    async with session.post(
        f"{base}/echo", data=body, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        got = await resp.json()
    assert got == {"sha256": sha256(body), "length": size}, got


async def random_roundtrip(session: aiohttp.ClientSession, base: str, size: int) -> None:
    """GET ``size`` random bytes from /random; the bytes must hash to the header."""
    async with session.get(f"{base}/random", params={"n": str(size)}) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        data = await resp.read()
        want = resp.headers[SHA_HEADER]
    assert len(data) == size, (len(data), size)
    assert sha256(data) == want


async def hello(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}/hello") as resp:
        assert resp.status == 200, resp.status
        assert await resp.json() == {"hello": "from inside"}


# -- network namespace -------------------------------------------------------------


@dataclass
class NetNS:
    name: str
    host_if: str
    ns_if: str
    host_addr: str  # the root namespace's end of the veth pair
    ns_addr: str  # the namespace's end

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def sh(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc {res.returncode}: {res.stderr.strip()}")
    return res
