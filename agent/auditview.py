"""``onprem-agent audit``: read the audit log (and its rotated files) back, filtered by
time: what the relay reached inside this network, and what it was refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``90s``, ``15m``, ``1h``, ``7d``, ``2w`` or an ISO time -> an aware datetime."""
    now = now or datetime.now(UTC)
    m = _SINCE.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: use e.g. 30m, 1h, 7d or an ISO time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_records(path: Path, since: datetime) -> Iterator[dict[str, Any]]:
    """Records at or after ``since``, oldest first, across rotated files."""
    files = [*sorted(path.parent.glob(path.name + ".*"), key=lambda p: -_suffix(p)), path]
    for file in files:
        if not file.is_file():
            continue
        with file.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    when = datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: skip it
                if when >= since:
                    yield record


def _suffix(p: Path) -> int:
    tail = p.name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def format_table(records: list[dict[str, Any]]) -> str:
    head = ("TIME", "CONNECTION", "REQUEST", "TARGET", "RESULT", "IN", "OUT", "MS")
    rows = [head] + [
        (
            str(r.get("time", "")),
            str(r.get("connection_id") or r.get("origin") or "-"),
            str(r.get("request_id") or "-"),
            str(r.get("target") or "-"),
            str(r.get("result", "")),
            str(r.get("bytes_in", 0)),
            str(r.get("bytes_out", 0)),
            str(r.get("duration_ms", "")),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
