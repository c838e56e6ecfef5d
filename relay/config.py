"""The relay's one typed configuration object (``relay.yaml`` < ``ONPREM_RELAY_*`` env)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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


class RelayConfig(StrictModel):
    database_url: str = "sqlite+aiosqlite:///relay.db"
    secrets_key_file: str = "secrets.key"
    node_id: str = Field(default_factory=lambda: os.uname().nodename)
    http: HttpConfig = HttpConfig()
    ssh: SshConfig = SshConfig()
    cloud: CloudConfig = CloudConfig()
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
