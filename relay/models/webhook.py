"""The account's state-change webhook (``/v1/account/webhook``) and the answer of
``/authorize`` for callers that want the provider URL as JSON."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from relay.models.connection import MASK, Model
from relay.models.iclient import URL_MAX, check_endpoint_url

SIGNATURE_HEADER = "X-Onprem-Signature"  # relay.oauth.signals.SIGNATURE_HEADER
SECRET_MIN = 16
SECRET_MAX = 1024


class WebhookIn(Model):
    """PUT /v1/account/webhook. ``secret`` is write-only: left out (or ``"********"``)
    it keeps the stored one, or, when there is none, a new one is generated and shown
    once in the answer."""

    url: str = Field(max_length=URL_MAX)
    secret: str | None = Field(None, max_length=SECRET_MAX)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_endpoint_url(v)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is None or v == MASK:
            return v
        if len(v) < SECRET_MIN:
            raise ValueError(f"must have at least {SECRET_MIN} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must not contain control characters")
        return v


class WebhookOut(Model):
    """The webhook (``url`` null: none set). ``secret`` shows as ``"********"``, except
    in the answer to the PUT that generated it."""

    url: str | None = None
    secret: str | None = None
    signature_header: str = SIGNATURE_HEADER
    created_at: datetime | None = None
    updated_at: datetime | None = None


class AuthorizationOut(Model):
    """GET /v1/connections/{id}/authorize with ``Accept: application/json``: where to
    send the user's browser (otherwise the answer is a 302 to it)."""

    authorization_url: str
    redirect_uri: str
    expires_in: int
