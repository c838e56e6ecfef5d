"""The workloads (design section 8) and how wrk runs them.

``mbps`` is megabytes per second (10^6 bytes/s of HTTP response bytes, headers
included, as wrk counts them), the unit the field notes use for OpenSSH.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
WRK_TIMEOUT_S = 5  # per request: a stalled request counts as a timeout error


@dataclass(frozen=True)
class Workload:
    name: str
    path: str  # "small" or "1m": appended to the scenario's base URL
    connections: int
    close: bool = False  # a new TCP connection per request
    bulk: bool = False  # report mbps

    @property
    def threads(self) -> int:
        # Two cores: wrk gets at most two threads, so load-generator cost stays the
        # same in every scenario.
        return min(2, self.connections)


# Order matters only for the table. small_c16 is not in the goals: it gives the plot a
# middle point on the concurrency axis.
WORKLOADS = [
    Workload("small_c1", "small", 1),
    Workload("small_c16", "small", 16),
    Workload("small_c64", "small", 64),
    Workload("new_conn_c16", "small", 16, close=True),
    Workload("bulk_1m_c8", "1m", 8, bulk=True),
]
BY_NAME = {w.name: w for w in WORKLOADS}
PLOT_CONCURRENCY = {"small_c1": 1, "small_c16": 16, "small_c64": 64}


def run_wrk(
    url: str,
    workload: Workload,
    duration_s: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run wrk once; the workload's numbers (rps, p50_ms, p99_ms, [mbps], errors)."""
    argv = [
        "wrk",
        f"-t{workload.threads}",
        f"-c{workload.connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(LUA),
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if workload.close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration_s + 30:.0f} s") from None
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if res.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({res.returncode}): {(res.stderr or res.stdout)[-400:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    out: dict[str, Any] = {
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
    }
    if workload.bulk:
        out["mbps"] = round(raw["bytes"] / seconds / 1e6, 1)
    out["requests"] = raw["requests"]
    out["errors"] = errors
    if errors:
        out["error_detail"] = {
            k: raw[k]
            for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            if raw[k]
        }
    return out
