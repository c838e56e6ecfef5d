"""``make bench-scale AGENTS=N``: N agent sessions on one relay process.

Creates N agents through the registry's Python API (the CLI would start N processes),
starts ``onprem-relay serve``, then a few worker processes each hold many agent
sessions: every session authenticates as its own agent with the agent's own
``agent.daemon.connect`` (same algorithms, host-key pinning, client version) and asks
for the dynamic forward (``tcpip-forward`` port 0), as ``onprem-agent run`` does; on
a drop it waits the agent's own jittered ``Backoff`` before dialling again.

Measures the relay's RSS before and after (``/proc/PID/status``), ``connect_all_s``
(all N sessions up), then restarts the relay (SIGTERM, start again on the same port)
and measures ``reconnect_all_s`` (from the new relay's ``relay_listening`` until all N
are back) and failed authentications (relay ``auth_failed`` log events).

Bounded by the harness too: the worker processes share the machine's cores with the
relay, so the JSON reports the CPU seconds each side spent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.procs import PY, ROOT, BenchError, Proc, Procs, rss_kib
from bench.relayctl import create_agents_async, init_relay, write_config

RESULTS = ROOT / "bench" / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
REPORT_EVERY_S = 0.2


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# -- worker: many agent sessions in one process ---------------------------------------


async def _worker(agents_file: Path, port: int, host_key: str, concurrency: int) -> None:
    import asyncssh

    from agent.backoff import Backoff
    from agent.config import AgentConfig
    from agent.daemon import connect
    from agent.errors import AuthRejectedError, FatalError

    agents = json.loads(agents_file.read_bytes())  # noqa: ASYNC240 (before any I/O)
    gate = asyncio.Semaphore(concurrency)
    state = {"up": 0, "attempts": 0, "failures": 0, "auth_rejected": 0, "drops": 0}
    full_at: list[float] = []  # monotonic times at which all our sessions were up
    changed = asyncio.Event()
    conns: set[Any] = set()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    def emit(**extra: Any) -> None:
        line = {**state, "t": time.monotonic(), **extra}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def hold(agent: dict[str, str]) -> None:
        config = AgentConfig.model_validate(
            {
                "relay": {"address": f"127.0.0.1:{port}", "host_key": host_key},
                "agent_id": agent["id"],
            }
        )
        backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        while not stopping.is_set():
            state["attempts"] += 1
            link = None
            try:
                async with gate:
                    got = await connect(config, agent["token"])
                    # connect() returns (conn, link) since the agent grew transports.
                    conn, link = got if isinstance(got, tuple) else (got, None)
                    try:
                        await conn.create_server(lambda *_: None, "localhost", 0)
                    except BaseException:
                        conn.close()
                        if link is not None:
                            await link.close()
                        raise
            except AuthRejectedError:
                # The real agent exits here: so does this session.
                state["auth_rejected"] += 1
                changed.set()
                return
            except FatalError:
                state["failures"] += 1
                return
            except (OSError, asyncssh.Error, TimeoutError):
                state["failures"] += 1
                await _sleep(backoff.next_delay(), stopping)
                continue
            conns.add(conn)
            state["up"] += 1
            if state["up"] == len(agents):
                full_at.append(time.monotonic())
            changed.set()
            await conn.wait_closed()
            conns.discard(conn)
            if link is not None:
                await link.close()
            state["up"] -= 1
            state["drops"] += 1
            changed.set()
            # These sessions stand for agents that were up for long (healthy_after_s
            # passed), so their backoff starts from the beginning, as the agent's does.
            backoff.reset()
            await _sleep(backoff.next_delay(), stopping)

    go = await loop.run_in_executor(None, sys.stdin.readline)
    if not go.startswith("go"):
        return
    tasks = [asyncio.create_task(hold(a)) for a in agents]

    def crashed(task: asyncio.Task[None]) -> None:
        # A bug here must stop the run, not leave a session silently missing.
        if not task.cancelled() and task.exception() is not None:
            emit(crashed=repr(task.exception()))
            os._exit(3)

    for t in tasks:
        t.add_done_callback(crashed)
    emit(started=True)
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPORT_EVERY_S):
                await stopping.wait()
        if changed.is_set() or full_at:
            changed.clear()
            emit(full_at=full_at[-1] if full_at else None)
            full_at.clear()
    # Close the sessions first: cancelling their tasks alone leaves asyncssh's
    # keepalive tasks pending at exit.
    for conn in list(conns):
        conn.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*(c.wait_closed() for c in list(conns)))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _sleep(delay: float, stopping: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stopping.wait()


# -- orchestrator ------------------------------------------------------------------------


class Workers:
    """The worker processes and the sum of what they report."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.latest: list[dict[str, Any]] = []
        self.assigned: list[int] = []
        self.full_at: list[float | None] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, parts: list[Path], sizes: list[int], argv: list[str]) -> None:
        for i, part in enumerate(parts):
            proc = await asyncio.create_subprocess_exec(
                *argv,
                "--agents-file",
                str(part),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            self.procs.append(proc)
            self.latest.append({"up": 0})
            self.assigned.append(sizes[i])
            self.full_at.append(None)
            self._readers.append(asyncio.create_task(self._read(i, proc)))

    async def _read(self, i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                self.latest[i] = line
                if line.get("full_at") is not None:
                    self.full_at[i] = line["full_at"]

    def go(self) -> float:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        return time.monotonic()

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.latest)

    def alive(self) -> bool:
        return all(p.returncode is None for p in self.procs)

    async def all_up(self, since: float, timeout: float) -> float | None:
        """When every session was up (monotonic), None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError("a worker process died")
            if self.total("auth_rejected"):
                raise BenchError(f"the relay rejected {self.total('auth_rejected')} tokens")
            done = [f for f in self.full_at if f is not None and f >= since]
            if len(done) == len(self.procs) and self.total("up") == sum(self.assigned):
                return max(done)
            await asyncio.sleep(0.1)
        return None

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(OSError):
                total += _cpu_s(p.pid)
        return total

    async def stop(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        for t in self._readers:
            t.cancel()


def _metric(http_port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def _orchestrate(args: argparse.Namespace, workdir: Path, procs: Procs) -> dict[str, Any]:
    n = args.agents
    nofile = _raise_nofile()
    if nofile < n + 1000:
        raise BenchError(f"open-file limit {nofile} is too low for {n} agents: ulimit -n")
    d = workdir / "relay"
    config, cfg = await asyncio.to_thread(init_relay, d)  # init runs its own loop
    t0 = time.monotonic()
    _, agents = await create_agents_async(config, "scale", n)
    create_s = time.monotonic() - t0
    print(f"scale: created {n} agents in {create_s:.1f} s", file=sys.stderr)

    def start_relay(tag: str) -> tuple[Proc, dict[str, Any]]:
        relay = procs.start(
            f"relay-{tag}",
            [PY, "-m", "relay", "serve", "--config", str(config)],
            d / f"relay-{tag}.log",
        )
        return relay, relay.wait_event("relay_listening", timeout=60)

    relay, up = await asyncio.to_thread(start_relay, "1")
    ssh_port, http_port = int(up["ssh_port"]), int(up["http_port"])
    # The restart must come back on the same ports.
    cfg["ssh"]["listen"] = f"127.0.0.1:{ssh_port}"
    cfg["http"]["listen"] = f"127.0.0.1:{http_port}"
    write_config(config, cfg)
    await asyncio.sleep(1.0)
    rss_idle = rss_kib(relay.pid)

    w = max(1, min(args.workers, n))
    parts, sizes = [], []
    for i in range(w):
        chunk = agents[i::w]
        part = workdir / f"agents-{i}.json"
        part.write_text(json.dumps(chunk))
        parts.append(part)
        sizes.append(len(chunk))
    workers = Workers()
    argv = [
        PY, "-m", "bench.scale_agents", "--worker",
        "--port", str(ssh_port),
        "--host-key", str(up["host_key"]),
        "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    result: dict[str, Any] = {"agents": n, "workers": w, "concurrency_per_worker": args.concurrency}
    try:
        await workers.start(parts, sizes, argv)
        await asyncio.sleep(1.0)  # imports
        relay_cpu0, workers_cpu0 = _cpu_s(relay.pid), workers.cpu_s()
        started = workers.go()
        done = await workers.all_up(started, args.timeout)
        if done is None:
            raise BenchError(
                f"only {workers.total('up')} of {n} sessions up after {args.timeout:.0f} s"
            )
        connect_all_s = done - started
        relay_cpu = _cpu_s(relay.pid) - relay_cpu0
        workers_cpu = workers.cpu_s() - workers_cpu0
        print(f"scale: {n} sessions up in {connect_all_s:.1f} s", file=sys.stderr)
        await asyncio.sleep(args.settle)
        rss_all = rss_kib(relay.pid)
        sessions_seen = _metric(http_port, "onprem_relay_agent_sessions")

        # Restart: SIGTERM, wait for the exit, start again on the same ports.
        failures_before = workers.total("failures")
        t_stop = time.monotonic()
        await asyncio.to_thread(relay.stop, 60)
        stop_s = time.monotonic() - t_stop
        relay2, listening = await asyncio.to_thread(start_relay, "2")
        # When the relay logged relay_listening, on the monotonic clock the workers use.
        logged = datetime.fromisoformat(listening["timestamp"].replace("Z", "+00:00"))
        t_listen = time.monotonic() - (time.time() - logged.timestamp())
        back = await workers.all_up(t_stop, args.timeout)
        if back is None:
            raise BenchError(
                f"only {workers.total('up')} of {n} sessions back {args.timeout:.0f} s "
                "after the restart"
            )
        reconnect_all_s = back - t_listen
        print(f"scale: all {n} back {reconnect_all_s:.1f} s after restart", file=sys.stderr)
        await asyncio.sleep(args.settle)
        rss_after_reconnect = rss_kib(relay2.pid)
        auth_failed = len(relay.log_events("auth_failed")) + len(relay2.log_events("auth_failed"))
        throttled = len(relay.log_events("auth_throttled")) + len(
            relay2.log_events("auth_throttled")
        )
        result.update(
            {
                "relay_rss_kib_per_agent": round((rss_all - rss_idle) / n, 1),
                "connect_all_s": round(connect_all_s, 2),
                "reconnect_all_s": round(reconnect_all_s, 2),
                "restart_to_all_back_s": round(back - t_stop, 2),
                "relay_stop_s": round(stop_s, 2),
                "auth_failures": auth_failed,
                "auth_throttled": throttled,
                "client_auth_rejected": workers.total("auth_rejected"),
                "client_connect_failures_during_restart": workers.total("failures")
                - failures_before,
                "relay_rss_idle_kib": rss_idle,
                "relay_rss_all_connected_kib": rss_all,
                "relay_rss_after_reconnect_kib": rss_after_reconnect,
                "relay_sessions_metric": sessions_seen,
                "relay_cpu_s_connect": round(relay_cpu, 2),
                "workers_cpu_s_connect": round(workers_cpu, 2),
                "relay_cpu_ms_per_connect": round(relay_cpu / n * 1000, 2),
                "create_agents_s": round(create_s, 1),
            }
        )
    finally:
        await workers.stop()
    return result


GOAL_AGENTS = 10_000


def _goals(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The goals are set for 10,000 agents; smaller runs show the trend."""
    goals: dict[str, dict[str, Any]] = {
        "relay_rss_kib_per_agent": {
            "value": r["relay_rss_kib_per_agent"],
            "target": "<= 100",
            "met": r["relay_rss_kib_per_agent"] <= 100,
        },
        "reconnect_all_s": {
            "value": r["reconnect_all_s"],
            "target": "<= 60",
            "met": r["reconnect_all_s"] <= 60,
        },
        "auth_failures": {
            "value": r["auth_failures"],
            "target": "0",
            "met": r["auth_failures"] == 0 and r["client_auth_rejected"] == 0,
        },
    }
    for g in goals.values():
        g["goal_for_agents"] = GOAL_AGENTS
    return goals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_agents", description=__doc__)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument("--concurrency", type=int, default=100, help="handshakes in flight per worker")
    p.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--agents-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--host-key", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _raise_nofile()
        asyncio.run(_worker(args.agents_file, args.port, args.host_key, args.concurrency))
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from bench.run import machine_info

    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="onprem-scale-"))
    procs = Procs()
    ok = False
    try:
        result = asyncio.run(_orchestrate(args, workdir, procs))
        ok = True
    except BenchError as exc:
        print(f"scale: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep or not ok:
            print(f"scale: work directory and logs: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        **result,
        "goals": _goals(result),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print()
    for key, g in doc["goals"].items():
        verdict = "met" if g["met"] else "NOT MET"
        if result["agents"] < GOAL_AGENTS:
            verdict += f" (the goal is for {GOAL_AGENTS:,} agents: AGENTS={GOAL_AGENTS})"
        print(f"goal {key}: {g['value']} (target {g['target']}): {verdict}")
    print(f"\nscale: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
