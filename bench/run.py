"""``make bench`` / ``make bench-smoke``: every scenario side by side in one run.

All scenarios are set up first and stay up; then each workload runs against each
scenario in turn (workload-major), so background noise on the machine hits them alike
and the ratios compare numbers taken seconds apart. Writes ``--out`` (JSON), the same
name with ``.md`` (tables for the README) and ``.png`` (the plot), and prints the table.

Exit codes: 0 done (optional scenarios may be skipped), 1 a required scenario
(direct, openssh, tunnel) failed or a process under test died, 2 the harness broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import ROOT, BenchError, Proc, Procs
from bench.scenarios import (
    OPTIONAL,
    SCENARIOS,
    THROUGH_AGENT,
    Env,
    Skip,
    Target,
    verify,
    wait_ready,
)
from bench.workloads import BY_NAME, WORKLOADS, Workload, run_wrk

RESULTS = ROOT / "bench" / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# The agent's reconnect backoff grows to 60 s while its sessions keep dropping.
READY_TIMEOUT_S = 90.0


def _version(argv: list[str], pattern: str) -> str | None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    m = re.search(pattern, res.stdout + res.stderr)
    return m.group(1) if m else None


def machine_info() -> dict[str, Any]:
    import aiohttp
    import asyncssh
    import cryptography

    from shared.version import __version__

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gib = round(kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    os_name = None
    try:
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
        os_name = m.group(1) if m else None
    except OSError:
        pass
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], r"(\w+)")
    try:
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except OSError:
        status = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "os": os_name,
        "python": platform.python_version(),
        "onprem_relay": __version__,
        "commit": commit,
        # Uncommitted changes to tracked files: the numbers are for the work tree.
        "worktree_modified": bool(status.strip()),
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
        "openssh": _version(["ssh", "-V"], r"(OpenSSH_\S+)"),
        "openssh_cipher": _version(
            ["ssh", "-F", "/dev/null", "-G", "127.0.0.1"], r"ciphers ([^,\s]+)"
        ),
        "relay_cipher": "aes128-gcm@openssh.com",
        "asyncssh": asyncssh.__version__,
        "aiohttp": aiohttp.__version__,
        "cryptography": cryptography.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _tree_ticks(pid: int) -> int:
    """CPU ticks (user + system) of ``pid`` and its live descendants."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen or p not in stats:
            continue
        seen.add(p)
        total += stats[p][1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


class CpuMeter:
    """CPU use of named processes (and their children: sshd forks one per client) and
    of wrk, over one wrk run, in percent of one core."""

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs

    def __enter__(self) -> CpuMeter:
        self.restart()
        return self

    def restart(self) -> None:
        self.t0 = time.monotonic()
        self.ticks0 = {n: _tree_ticks(p.pid) for n, p in self.procs.items()}
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.wrk0 = ru.ru_utime + ru.ru_stime

    def __exit__(self, *exc: object) -> None:
        dt = time.monotonic() - self.t0
        self.cpu_pct = {
            n: round((_tree_ticks(p.pid) - self.ticks0[n]) / _CLK_TCK / dt * 100)
            for n, p in self.procs.items()
        }
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_pct["wrk"] = round((ru.ru_utime + ru.ru_stime - self.wrk0) / dt * 100)


def scenario_procs(env: Env, name: str) -> dict[str, Proc]:
    by_name = {p.name: p for p in env.procs.items}
    wanted = {
        "direct": ["nginx"],
        "openssh": ["sshd", "ssh", "nginx"],
        "tunnel": ["relay", "agent", "nginx"],
        "relay_onprem": ["relay", "agent", "nginx"],
        "relay_cloud": ["relay", "nginx"],
    }[name]
    return {n: by_name[n] for n in wanted if n in by_name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=7.0, help="seconds per workload run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per scenario")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    p.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument(
        "--smoke", action="store_true", help="1 s per run, no warm-up, no small_c16, smoke.json"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory and its logs")
    args = p.parse_args(argv)
    if args.smoke:
        # Every scenario and every code path, in well under a minute.
        args.duration, args.warmup = 1.0, 0.0
        if args.workloads == p.get_default("workloads"):
            args.workloads = ",".join(w.name for w in WORKLOADS if w.name != "small_c16")
        if args.out == RESULTS / "latest.json":
            args.out = RESULTS / "smoke.json"
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    unknown += [w for w in args.workloads.split(",") if w and w not in BY_NAME]
    if unknown:
        p.error(f"unknown scenario or workload: {', '.join(unknown)}")
    workloads = [BY_NAME[w] for w in args.workloads.split(",") if w]
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found: run 'make bench' (installs it)", file=sys.stderr)
            return 2

    # make's SIGTERM (or a CI timeout) must still stop every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="onprem-bench-"))
    procs = Procs()
    env = Env(workdir, procs)
    failed = False
    try:
        doc = _run(env, names, workloads, args)
        # Optional scenarios (the HTTP API being built) never fail the run.
        failed = any(
            "error" in r or any(isinstance(c, dict) and "error" in c for c in r.values())
            for name, r in doc["scenarios"].items()
            if name not in OPTIONAL
        )
    except BenchError as exc:  # a process under test died mid-run
        print(f"bench: FAILED: {exc}\nbench: logs kept in {workdir}", file=sys.stderr)
        args.keep = True
        return 1
    except Exception:
        traceback.print_exc()
        print(f"bench: harness error; logs kept in {workdir}", file=sys.stderr)
        args.keep = True
        return 2
    finally:
        procs.stop_all()
        if failed:
            args.keep = True
        if args.keep:
            print(f"bench: work directory and logs: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbench: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 1 if failed else 0


def _run(env: Env, names: list[str], workloads: list[Workload], args: Any) -> dict[str, Any]:
    machine = machine_info()
    results: dict[str, dict[str, Any]] = {}
    targets: dict[str, Target] = {}
    for name in names:
        t0 = time.monotonic()
        try:
            target = SCENARIOS[name](env)
            verify(name, target)
        except Skip as exc:
            results[name] = {"skipped": str(exc)}
        except BenchError as exc:
            if name in OPTIONAL:
                results[name] = {"skipped": f"setup failed: {exc}"}
            else:
                results[name] = {"error": str(exc)}
        else:
            targets[name] = target
            results[name] = {}
        state = next(iter(results[name]), "ready")
        print(f"bench: {name}: {state} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        if state != "ready":
            print(f"       {results[name][state]}", file=sys.stderr)

    if args.warmup > 0:
        for name, target in targets.items():
            try:
                if name in THROUGH_AGENT:
                    wait_ready(target, READY_TIMEOUT_S)
                run_wrk(target.url("small"), BY_NAME["small_c16"], args.warmup, target.headers)
            except BenchError as exc:
                print(f"bench: warm-up of {name} failed: {exc}", file=sys.stderr)

    for w in workloads:
        for name, target in targets.items():
            waited = None
            drops = env.session_drops()
            with CpuMeter(scenario_procs(env, name)) as meter:
                try:
                    if name in THROUGH_AGENT:
                        # A wrk run ends by resetting its connections, which may drop
                        # the agent's SSH session (see the README): measure the tunnel
                        # once the agent is back, and count the drops.
                        waited = wait_ready(target, READY_TIMEOUT_S)
                        drops = env.session_drops()
                        meter.restart()
                    r = run_wrk(target.url(w.path), w, args.duration, target.headers)
                except BenchError as exc:
                    r = {"error": str(exc)}
            r["cpu_pct"] = meter.cpu_pct
            if r.get("rps"):
                # CPU per request (per 1 MiB response for bulk): less sensitive to other
                # load on the machine than the rates are.
                r["cpu_us_per_req"] = {
                    n: round(pct / 100 / r["rps"] * 1e6, 1) for n, pct in meter.cpu_pct.items()
                }
            if name in THROUGH_AGENT:
                time.sleep(0.2)  # a drop happens within milliseconds of wrk's exit
                r["agent_wait_s"] = round(waited or 0.0, 2)
                r["session_drops"] = env.session_drops() - drops
            results[name][w.name] = r
            shown = r.get("mbps", r.get("rps"))
            unit = "MB/s" if "mbps" in r else "req/s"
            print(f"bench: {w.name:13} {name:13} {shown} {unit}", file=sys.stderr)
        for proc in env.procs.items:
            if not proc.alive():
                raise BenchError(f"{proc.name} died during the run:\n{proc.tail()}")

    ratios, goals = report.evaluate(results)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": args.duration,
        "machine": machine,
        "notes": {
            "mbps": "megabytes (10^6 bytes) of HTTP response per second, as wrk counts them",
            "nginx": "worker_processes 1, keep-alive on, access log off",
            "wrk": "threads = min(2, connections); new_conn_c16 sends 'Connection: close'",
            "cpu_pct": "CPU of each process tree during the run, % of one core",
        },
        "scenarios": results,
        "ratios": ratios,
        "goals": goals,
    }
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(report.markdown_report(doc))
    why_not = report.plot(doc, out.with_suffix(".png"))
    print()
    print(report.text_report(doc))
    print()
    print(f"bench: wrote {out}, {out.with_suffix('.md').name}", end="")
    print(f", {out.with_suffix('.png').name}" if why_not is None else f" (no plot: {why_not})")
    return doc


if __name__ == "__main__":
    sys.exit(main())
