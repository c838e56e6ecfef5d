"""The relay's one typed configuration object (``relay.yaml`` < ``ONPREM_RELAY_*`` env)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from shared.config import StrictModel, load_config
from shared.net import parse_host_port

DEFAULT_CONFIG = "relay.yaml"
ENV_PREFIX = "ONPREM_RELAY_"


class LogConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class HttpConfig(StrictModel):
    listen: str = "0.0.0.0:8080"
    public_url: str = "http://localhost:8080"
    # The web console at /console/ (sign-in with an API token).
    console: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_host_port(v)
        return v


class SshConfig(StrictModel):
    listen: str = "0.0.0.0:2222"
    # host:port that agents dial (printed in agent.yaml); default: public_url's host
    # and the listen port.
    public_address: str | None = None
    host_key_file: str = "ssh_host_ed25519_key"
    login_timeout_s: float = Field(20.0, gt=0)
    keepalive_interval_s: float = Field(15.0, gt=0)
    # A silent peer is dropped after (keepalive_count_max + 1) x keepalive_interval_s:
    # 45 s with the defaults (asyncssh waits for one more interval than the count).
    keepalive_count_max: int = Field(2, ge=1)
    max_sessions_per_agent: int = Field(16, ge=1)
    max_channels_per_session: int = Field(1024, ge=1)
    auth_failures_per_minute: int = Field(10, ge=1)  # per source address
    stream_open_timeout_s: float = Field(10.0, gt=0)
    token_recheck_interval_s: float = Field(5.0, gt=0)  # drops sessions of rotated tokens
    presence_interval_s: float = Field(15.0, gt=0)
    window: int = Field(2 * 1024 * 1024, ge=32768)
    max_pktsize: int = Field(32768, ge=4096)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_host_port(v)
        return v


class LocalForward(StrictModel):
    """A loopback TCP listener piping each connection into ``AgentHub.open_stream``:
    for benchmarks and end-to-end tests only (off unless configured)."""

    listen: str = "127.0.0.1:0"
    agent_id: str
    target: str

    @field_validator("listen")
    @classmethod
    def _loopback(cls, v: str) -> str:
        host, _ = parse_host_port(v)
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("local forwards may only listen on loopback")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        parse_host_port(v)
        return v


class CloudConfig(StrictModel):
    deny_private_networks: bool = True


def url_origin(value: str) -> str:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased, default port
    left out; ``ValueError`` for anything else."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) origin such as https://console.example.com")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{value!r}: an origin carries no credentials")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


class OAuthConfig(StrictModel):
    """OAuth 2.0 connections: the authorization flow, token refresh, webhooks."""

    # Where the callback may send the browser afterwards (``return_url`` of
    # /authorize): http.public_url's origin, and these origins (a web console).
    return_origins: list[str] = []
    state_ttl_s: float = Field(600.0, gt=0, le=3600)  # RFC 6749 4.1.2: codes live <= 10 min
    refresh_leeway_s: float = Field(60.0, ge=0)  # refresh this long before expiry
    default_expires_in_s: float = Field(3600.0, gt=0)  # a token response without expires_in
    token_timeout_s: float = Field(30.0, gt=0, le=300)  # token and revocation requests
    refresh_wait_s: float = Field(60.0, gt=0)  # waiting for another process's refresh
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    webhook_attempts: int = Field(3, ge=1, le=10)

    @field_validator("return_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if urlsplit(o.strip()).path not in ("", "/"):
                raise ValueError(f"{o!r}: an origin has no path (https://host[:port])")
        return [url_origin(o) for o in v]

    @property
    def lease_s(self) -> float:
        """The cross-process refresh lease: longer than a token request may take, so a
        lease never expires while its owner still waits for the provider."""
        return self.token_timeout_s * 1.5


class RelayConfig(StrictModel):
    database_url: str = "sqlite+aiosqlite:///relay.db"
    secrets_key_file: str = "secrets.key"
    node_id: str = Field(default_factory=lambda: os.uname().nodename)
    http: HttpConfig = HttpConfig()
    ssh: SshConfig = SshConfig()
    cloud: CloudConfig = CloudConfig()
    oauth: OAuthConfig = OAuthConfig()
    log: LogConfig = LogConfig()
    local_forwards: list[LocalForward] = []
    # Agents older than this (e.g. "0.2.0") are flagged: a warning when they connect,
    # "outdated": true in the API and OUTDATED in `agents list`.
    min_agent_version: str | None = Field(None, pattern=r"^\d+(\.\d+){0,3}$")
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Where relative paths in the file are resolved from (set by ``load``).
    base_dir: str = "."

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("ONPREM_RELAY_CONFIG") or DEFAULT_CONFIG


def load(path: str | None = None) -> RelayConfig:
    p = config_path(path)
    base = str(Path(p).resolve().parent)
    return load_config(RelayConfig, p, env_prefix=ENV_PREFIX, overrides={"base_dir": base})
