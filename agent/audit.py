"""The agent's audit log: one JSON line per stream, so the customer's IT can see what
the relay reached inside their network (and what it was refused). Rotated by size."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_MAX_BYTES = 10 * 1024 * 1024
_BACKUPS = 5


def split_origin(origin: str) -> tuple[str | None, str | None]:
    """The relay puts ``con_.../req_...`` in the channel's originator host."""
    parts = origin.split("/", 1)
    connection = parts[0] if parts[0].startswith("con_") else None
    request = parts[1] if len(parts) > 1 and parts[1].startswith("req_") else None
    return connection, request


class AuditLog:
    def __init__(self, path: str | Path, max_bytes: int = _MAX_BYTES, backups: int = _BACKUPS):
        self.path = Path(path)
        self._logger = logging.Logger(f"onprem-agent-audit:{self.path}")
        self._logger.propagate = False
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)
        self._handler = handler

    def record(self, **fields: Any) -> None:
        origin = str(fields.pop("origin", ""))
        connection, request = split_origin(origin)
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "connection_id": connection,
            "request_id": request,
            "origin": origin if connection is None else None,
            **fields,
        }
        self._logger.info(json.dumps({k: v for k, v in line.items() if v is not None}))

    def close(self) -> None:
        self._handler.close()
