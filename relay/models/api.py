"""Shapes shared by every REST endpoint: errors, the audit trail, list envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict

from relay.models.connection import ConnectionOut, Model, TestResult


class ErrorDetail(Model):
    """One problem: for validation errors the dotted ``field`` and its ``message``;
    other errors may add keys (``connection_id`` for a 409 naming what is in use)."""

    model_config = ConfigDict(extra="allow")

    field: str | None = None
    message: str


class ErrorInfo(Model):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorBody(Model):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


class TestFailedBody(ErrorBody):
    """422 from Save & continue: the connection failed its test, nothing was saved."""

    __test__ = False  # not a pytest class

    test: TestResult


class ConnectionList(Model):
    connections: list[ConnectionOut]


class AuditEventOut(Model):
    id: int
    at: datetime
    actor: str
    action: str
    target_id: str
    details: dict[str, Any]


class AuditList(Model):
    events: list[AuditEventOut]
