"""The agent's one typed configuration object (``agent.yaml`` < ``ONPREM_AGENT_*`` env)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from agent.allowlist import parse_rule
from shared.config import ConfigError, StrictModel, load_config
from shared.net import parse_host_port

DEFAULT_CONFIG = "/etc/onprem-agent/agent.yaml"
ENV_PREFIX = "ONPREM_AGENT_"
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


class LogConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class RelayTarget(StrictModel):
    address: str
    host_key: str
    ca_file: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v.startswith(("ws://", "wss://")):
            return v
        parse_host_port(v, default_port=2222)
        return v

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str) -> str:
        if not _FINGERPRINT.match(v):
            raise ValueError("must be an OpenSSH fingerprint like 'SHA256:...' (43 characters)")
        return v


def _allow_entry(entry: str) -> str:
    parse_rule(entry)  # raises ValueError naming the entry and what is wrong
    return entry


class AgentConfig(StrictModel):
    relay: RelayTarget
    agent_id: str = Field(pattern=r"^agt_[A-Za-z0-9]+$")
    token_file: str | None = None
    token: SecretStr | None = None  # usually from env ONPREM_AGENT_TOKEN
    allow: list[Annotated[str, AfterValidator(_allow_entry)]] = []
    proxy: str | None = None
    connections: int = Field(1, ge=1, le=64)
    health_listen: str | None = None
    log: LogConfig = LogConfig()
    audit_file: str | None = None
    # Timeouts and limits, each with a default.
    connect_timeout_s: float = Field(15.0, gt=0)
    dial_timeout_s: float = Field(10.0, gt=0)
    keepalive_interval_s: float = Field(15.0, gt=0)
    # A silent peer is dropped after (keepalive_count_max + 1) x keepalive_interval_s:
    # 45 s with the defaults (asyncssh waits for one more interval than the count).
    keepalive_count_max: int = Field(2, ge=1)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    healthy_after_s: float = Field(30.0, gt=0)  # a session this old resets the backoff
    drain_timeout_s: float = Field(10.0, ge=0)
    max_streams: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _backoff(self) -> AgentConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self

    @field_validator("health_listen")
    @classmethod
    def _health(cls, v: str | None) -> str | None:
        if v is not None:
            parse_host_port(v)
        return v

    def read_token(self) -> str:
        """The access token: env/inline value first, else ``token_file`` (must not be
        readable by group or others)."""
        if self.token is not None:
            return self.token.get_secret_value().strip()
        if not self.token_file:
            raise ConfigError("no access token: set token_file or env ONPREM_AGENT_TOKEN")
        path = Path(self.token_file)
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read token file: {exc.strerror or exc}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path}: token file must not be accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        if not text:
            raise ConfigError(f"{path}: token file is empty")
        return text


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("ONPREM_AGENT_CONFIG") or DEFAULT_CONFIG


def load(path: str | None = None) -> AgentConfig:
    return load_config(AgentConfig, config_path(path), env_prefix=ENV_PREFIX)
