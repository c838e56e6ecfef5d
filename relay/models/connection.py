"""HTTP connections (design section 6): what callers send, what they read back.

Secrets (basic password, token, client key) are write-only: on read they show as
``"********"`` when set; on write, ``"********"`` (or leaving the field out in a PATCH)
keeps the stored value.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MASK = "********"
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}$")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
MediaType = Literal["json", "xml", "urlencoded", "plaintext"]
Location = Literal["header", "url", "body"]
Secret = Annotated[str, Field(min_length=1, max_length=16384)]
Path = Annotated[str, Field(min_length=1, max_length=500)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Header(Model):
    name: str
    value: str = Field(max_length=8192)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HEADER_NAME.match(v):
            raise ValueError("not a valid HTTP header name")
        if v.lower() in _HOP_BY_HOP:
            raise ValueError(f"header {v!r} is managed by the relay and cannot be set")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        if any(c in v for c in "\r\n\x00"):
            raise ValueError("header values cannot contain CR, LF or NUL")
        return v


class BasicAuth(Model):
    username: str = Field(min_length=1, max_length=1024)
    password: Secret | None = None


class TokenAuth(Model):
    token: Secret | None = None
    location: Location = "header"
    header_name: str = "Authorization"
    scheme: str | None = Field("Bearer", max_length=100)
    param_name: str = Field("access_token", min_length=1, max_length=200)

    @field_validator("header_name")
    @classmethod
    def _header(cls, v: str) -> str:
        return Header(name=v, value="").name

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        return v or None  # "" and null both mean: the token alone, no scheme


class OAuth2Auth(Model):
    iclient_id: str = Field(pattern=r"^icl_[a-z0-9]+$")
    scope: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=100
    )
    scope_delimiter: str | None = Field(None, max_length=5)
    access_token_headers: list[Header] = Field(default_factory=list, max_length=50)


class HttpAuth(Model):
    type: Literal["none", "basic", "token", "oauth2"] = "none"
    oauth2: OAuth2Auth | None = None
    basic: BasicAuth | None = None
    token: TokenAuth | None = None
    fail_status_code: int | None = Field(None, ge=100, le=599)
    fail_path: Path | None = None
    fail_values: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=100
    )

    @model_validator(mode="after")
    def _matching_section(self) -> HttpAuth:
        if self.type != "none" and getattr(self, self.type) is None:
            raise ValueError(f"auth.type is {self.type!r} but auth.{self.type} is missing")
        return self


class RateLimit(Model):
    fail_status_code: int | None = Field(None, ge=100, le=599)
    fail_path: Path | None = None
    fail_values: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=100
    )
    retry_after_header: str = "Retry-After"
    wait_between_requests_ms: int = Field(0, ge=0, le=600_000)


class Ping(Model):
    method: Method = "GET"
    relative_uri: str = Field("/", max_length=4096)
    body: Any = None
    success_path: Path | None = None
    success_values: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=100
    )
    fail_path: Path | None = None
    fail_values: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=100
    )
    error_path: Path | None = None


class ClientCertificate(Model):
    cert_pem: str = Field(min_length=1, max_length=65536)
    key_pem: Secret | None = None


def _check_base_uri(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials: use auth.basic")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return v


class HttpSettings(Model):
    base_uri: str = Field(max_length=2048)
    media_type: MediaType = "json"
    headers: list[Header] = Field(default_factory=list, max_length=100)
    auth: HttpAuth = Field(default_factory=HttpAuth)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    ping: Ping | None = Field(default_factory=Ping)
    concurrency_level: int | None = Field(None, ge=1, le=1000)
    borrow_concurrency_from: str | None = Field(None, pattern=r"^con_[a-z0-9]+$")
    disable_strict_ssl: bool = False
    ca_pem: str | None = Field(None, max_length=262144)
    client_certificate: ClientCertificate | None = None
    timeout_s: float = Field(30, gt=0, le=300)

    @field_validator("base_uri")
    @classmethod
    def _base_uri(cls, v: str) -> str:
        return _check_base_uri(v)


class ConnectionIn(Model):
    """What POST /v1/connections and POST /v1/connections/test take."""

    name: str = Field(min_length=1, max_length=200)
    type: Literal["http"] = "http"
    mode: Literal["cloud", "onpremise"] = "cloud"
    agent_id: str | None = Field(None, pattern=r"^agt_[a-z0-9]+$")
    http: HttpSettings

    @model_validator(mode="after")
    def _agent_for_mode(self) -> ConnectionIn:
        if self.mode == "onpremise" and not self.agent_id:
            raise ValueError("agent_id is required when mode is 'onpremise'")
        if self.mode == "cloud" and self.agent_id:
            raise ValueError("agent_id must be null when mode is 'cloud'")
        return self


ConnectionState = Literal["online", "offline", "needs_authorization"]


class ConnectionOut(ConnectionIn):
    """What GET returns: secrets masked, plus read-only fields."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: ConnectionState
    state_reason: str | None = None
    last_tested_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


ErrorCode = Literal[
    "agent_offline",
    "target_not_allowed",
    "target_unreachable",
    "connection_refused",
    "tls_error",
    "timeout",
    "auth_failed",
    "needs_authorization",
    "ping_failed",
    "rate_limited",
    "blocked_destination",
]


class TestError(Model):
    code: ErrorCode
    message: str


class TestResult(Model):
    __test__ = False  # not a pytest class

    ok: bool
    route: Literal["cloud", "onpremise"]
    status: int | None = None
    latency_ms: float
    error: TestError | None = None


class RequestIn(Model):
    method: Method = "GET"
    relative_uri: str = Field("/", max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict, max_length=100)
    body: Any = None
    body_text: str | None = None
    body_base64: str | None = None

    @model_validator(mode="after")
    def _one_body(self) -> RequestIn:
        given = [n for n in ("body", "body_text", "body_base64") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of body, body_text, body_base64 (got {given})")
        for name, value in self.headers.items():
            Header(name=name, value=value)
        return self


class RequestOut(Model):
    status: int
    headers: dict[str, str]
    body: Any = None
    body_text: str | None = None
    body_base64: str | None = None
    route: Literal["cloud", "onpremise"]
    attempts: int
