"""Ratios and goals from one run's numbers, the stdout table, a Markdown table for the
README and the PNG plot (requests/s and p99 against concurrency per scenario)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workloads import PLOT_CONCURRENCY, WORKLOADS, Workload

Results = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Goal:
    key: str  # the key in "ratios"
    scenario: str
    baseline: str
    workload: str
    metric: str
    target: float
    kind: str = "ratio"  # "ratio": scenario/baseline >= target; "diff": minus <= target

    def describe(self) -> str:
        if self.kind == "diff":
            return f"<= +{self.target:g} ms"
        return f">= {self.target:g}x"


GOALS = [
    Goal("tunnel_vs_openssh.bulk_1m_c8", "tunnel", "openssh", "bulk_1m_c8", "mbps", 1.5),
    Goal("tunnel_vs_openssh.small_c1", "tunnel", "openssh", "small_c1", "rps", 1.0),
    Goal("tunnel_vs_openssh.new_conn_c16", "tunnel", "openssh", "new_conn_c16", "rps", 1.0),
    Goal("tunnel_vs_openssh.small_c64", "tunnel", "openssh", "small_c64", "rps", 0.5),
    Goal("relay_onprem_vs_openssh.small_c64", "relay_onprem", "openssh", "small_c64", "rps", 0.3),
    Goal(
        "relay_cloud_minus_direct.small_c1.p50_ms",
        "relay_cloud",
        "direct",
        "small_c1",
        "p50_ms",
        1.0,
        kind="diff",
    ),
]


def _metric(results: Results, scenario: str, workload: str, metric: str) -> float | None:
    value = results.get(scenario, {}).get(workload, {})
    if not isinstance(value, dict):
        return None
    got = value.get(metric)
    return float(got) if isinstance(got, int | float) else None


def evaluate(results: Results) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
    """(ratios, goals): each goal's value, target and whether it is met (None: not
    measured in this run)."""
    ratios: dict[str, float | None] = {}
    goals: dict[str, dict[str, Any]] = {}
    for g in GOALS:
        a = _metric(results, g.scenario, g.workload, g.metric)
        b = _metric(results, g.baseline, g.workload, g.metric)
        value: float | None = None
        if a is not None and b is not None:
            if g.kind == "diff":
                value = round(a - b, 3)
            elif b > 0:
                value = round(a / b, 3)
        ratios[g.key] = value
        met = None
        if value is not None:
            met = value <= g.target if g.kind == "diff" else value >= g.target
        goals[g.key] = {"value": value, "target": g.describe(), "met": met}
    return ratios, goals


def _ran(results: Results) -> list[Workload]:
    return [w for w in WORKLOADS if any(w.name in r for r in results.values())]


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric.endswith("_ms"):
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _cells(results: Results, scenarios: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["workload", "metric", *scenarios]
    rows: list[list[str]] = []
    for w in _ran(results):
        metrics = ["mbps"] if w.bulk else ["rps", "p50_ms", "p99_ms"]
        if w.close:
            metrics = ["rps", "p99_ms"]
        for m in metrics:
            row = [w.name, m]
            for s in scenarios:
                entry = results.get(s, {})
                if "skipped" in entry or "error" in entry:
                    row.append("skipped" if "skipped" in entry else "FAILED")
                    continue
                row.append(_fmt(_metric(results, s, w.name, m), m))
            rows.append(row)
    return header, rows


# The processes that carry the traffic in each scenario (not wrk, not nginx).
_CARRIERS = {"openssh": ("sshd", "ssh"), "tunnel": ("relay", "agent")}
_CARRIERS |= {"relay_onprem": ("relay", "agent"), "relay_cloud": ("relay",)}


def _cpu_cells(results: Results, scenarios: list[str]) -> tuple[list[str], list[list[str]]]:
    shown = [s for s in scenarios if s in _CARRIERS and "skipped" not in results[s]]
    header = ["workload", *shown]
    rows = []
    for w in _ran(results):
        row = [w.name]
        for s in shown:
            per = results.get(s, {}).get(w.name, {}).get("cpu_us_per_req")
            if not per:
                row.append("-")
                continue
            parts = [per.get(p) for p in _CARRIERS[s] if per.get(p) is not None]
            detail = " + ".join(f"{v:.0f}" for v in parts)
            row.append(f"{sum(parts):.0f} ({detail})" if len(parts) > 1 else detail)
        rows.append(row)
    return header, rows


def _goal_rows(goals: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for g in GOALS:
        info = goals[g.key]
        value = info["value"]
        if value is None:
            shown, status = "-", "not measured"
        elif g.kind == "diff":
            shown = f"{value:+.2f} ms"
            gap = value - g.target
            status = "met" if info["met"] else f"NOT MET ({gap:+.2f} ms over)"
        else:
            shown = f"{value:.2f}x"
            pct = (value / g.target - 1) * 100
            status = f"met ({pct:+.0f}%)" if info["met"] else f"NOT MET ({pct:+.0f}%)"
        rows.append([f"{g.key} ({g.metric})", shown, g.describe(), status])
    return rows


def _text_table(header: list[str], rows: list[list[str]], numeric_from: int = 99) -> str:
    """Columns from ``numeric_from`` on are right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [
            c.rjust(w) if i >= numeric_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def text_report(doc: dict[str, Any]) -> str:
    results: Results = doc["scenarios"]
    scenarios = list(results)
    header, rows = _cells(results, scenarios)
    parts = [_text_table(header, rows, numeric_from=2), ""]
    for s in scenarios:
        for state in ("skipped", "error"):
            if state in results[s]:
                parts.append(f"{s}: {state}: {results[s][state]}")
    for s in scenarios:
        for w, r in results[s].items():
            if not isinstance(r, dict):
                continue
            if r.get("error"):
                parts.append(f"{s}.{w}: failed: {r['error']}")
            if r.get("errors"):
                parts.append(f"{s}.{w}: {r['errors']} wrk errors {r.get('error_detail')}")
            if r.get("session_drops"):
                parts.append(
                    f"{s}.{w}: the agent's SSH session dropped {r['session_drops']}x "
                    f"(relay 'session_down'); waited {r.get('agent_wait_s')} s for it first"
                )
    parts += ["", "CPU per request, µs (the tunnel's own processes: relay + agent, sshd + ssh):"]
    parts.append(_text_table(*_cpu_cells(results, scenarios), numeric_from=1))
    parts += ["", "Goals (ratios from this run):"]
    parts.append(_text_table(["goal", "value", "target", "status"], _goal_rows(doc["goals"])))
    return "\n".join(parts)


def markdown_report(doc: dict[str, Any]) -> str:
    results: Results = doc["scenarios"]
    header, rows = _cells(results, list(results))
    goals = _md_table(["goal", "value", "target", "status"], _goal_rows(doc["goals"]))
    cpu = _md_table(*_cpu_cells(results, list(results)))
    return "\n\n".join([_md_table(header, rows), cpu, goals]) + "\n"


def plot(doc: dict[str, Any], path: Path) -> str | None:
    """Write the PNG; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r bench/requirements.txt)"
    results: Results = doc["scenarios"]
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.5))
    for scenario, entry in results.items():
        if "skipped" in entry or "error" in entry:
            continue
        xs, rps, p99 = [], [], []
        for workload, conc in PLOT_CONCURRENCY.items():
            r = entry.get(workload)
            if isinstance(r, dict) and "rps" in r:
                xs.append(conc)
                rps.append(r["rps"])
                p99.append(r["p99_ms"])
        if xs:
            ax_rps.plot(xs, rps, marker="o", label=scenario)
            ax_p99.plot(xs, p99, marker="o", label=scenario)
    for ax, title, ylabel in (
        (ax_rps, "small body, keep-alive: requests/s", "requests/s"),
        (ax_p99, "small body, keep-alive: p99 latency", "p99 (ms)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(PLOT_CONCURRENCY.values()))
        ax.set_xticklabels([str(c) for c in PLOT_CONCURRENCY.values()])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_rps.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    m = doc.get("machine", {})
    fig.suptitle(
        f"onprem-relay {m.get('onprem_relay', '?')} on {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores, {doc.get('duration_s', '?')} s per point",
        fontsize="medium",
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
