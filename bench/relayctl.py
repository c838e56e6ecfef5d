"""Set up a relay for a benchmark: ``onprem-relay init`` and the account and agents,
in this process (each CLI call would cost a Python start-up: seconds on a busy
two-core machine, and ten thousand of them for ``bench-scale``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import yaml

from bench.procs import BenchError


def init_relay(directory: Path, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """``onprem-relay init --dir DIR``, then loopback ports chosen by the kernel (the
    relay logs them in ``relay_listening``) and ``overrides`` merged into relay.yaml."""
    from relay.cli import main as relay_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = relay_cli(["init", "--dir", str(directory)])
    if code != 0:
        raise BenchError(f"onprem-relay init failed ({code}): {out.getvalue()[-500:]}")
    config = directory / "relay.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["ssh"]["listen"] = "127.0.0.1:0"
    cfg["http"]["listen"] = "127.0.0.1:0"
    cfg["log"] = {"level": "info", "format": "json"}
    cfg.update(overrides)
    write_config(config, cfg)
    return config, cfg


def write_config(config: Path, cfg: dict[str, Any]) -> None:
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


async def create_agents_async(
    config: Path, account: str, agents: int
) -> tuple[str, list[dict[str, str]]]:
    from relay import config as relay_config
    from relay.registry import Registry

    cfg = relay_config.load(str(config))
    registry = await Registry.open(cfg.database_url, base_dir=cfg.base_dir)
    try:
        acc, api_token = await registry.create_account(account, actor="bench")
        out = []
        for i in range(agents):
            agent, token = await registry.create_agent(acc.id, f"{account}-{i}", actor="bench")
            out.append({"id": agent.id, "token": token})
        return api_token, out
    finally:
        await registry.close()


def create_agents(config: Path, account: str, agents: int) -> tuple[str, list[dict[str, str]]]:
    """An account (its API token) and ``agents`` agents (id and access token each),
    through the registry's Python API."""
    return asyncio.run(create_agents_async(config, account, agents))
