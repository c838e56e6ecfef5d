"""What ships beside the code: example configs, systemd units, CLI entry points, README
and the CI entry point stay valid and in step with the code."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from shared.config import load_config
from shared.version import __version__

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every leaf field of a config model (``ssh.listen``), and of
    lists of models with their items' fields (``local_forwards[].listen``)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation: Any = field.annotation
        if typing.get_origin(annotation) is list:
            out.append(dotted)
            (annotation,) = typing.get_args(annotation)
            dotted += "[]"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(_keys(annotation, f"{dotted}."))
        elif not dotted.endswith("[]"):
            out.append(dotted)
    return out


def test_relay_example_config_is_valid() -> None:
    from relay.config import RelayConfig

    cfg = load_config(RelayConfig, DEPLOY / "relay.example.yaml")
    assert cfg.ssh.listen.endswith(":2222")
    assert cfg.database_url.startswith("sqlite+aiosqlite:///")


def test_agent_example_config_is_valid() -> None:
    from agent.config import AgentConfig

    cfg = load_config(AgentConfig, DEPLOY / "agent.example.yaml")
    assert cfg.token_file == "/etc/onprem-agent/token"
    assert cfg.allow, "the example should show allowlist entries"


def test_agent_example_is_what_the_unit_runs() -> None:
    unit = (DEPLOY / "onprem-agent.service").read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/onprem-agent run --config /etc/onprem-agent/agent.yaml" in unit


@pytest.mark.parametrize("unit", ["onprem-agent.service", "onprem-relay.service"])
def test_systemd_units_are_hardened(unit: str) -> None:
    lines = (DEPLOY / unit).read_text(encoding="utf-8").splitlines()
    settings = {line.strip() for line in lines if line and not line.startswith("#")}
    required = [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "Restart=always",
        "RestartSec=5",
        "SystemCallFilter=@system-service",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
    ]
    missing = [item for item in required if item not in settings]
    assert not missing, f"{unit} lacks {missing}"
    assert "DynamicUser=yes" in settings or any(s.startswith("User=") for s in settings)
    assert {"UMask=0077", "UMask=0027"} & settings
    assert "[Install]" in settings


def _directives(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_agent_unit_matches_install_service() -> None:
    from agent.install import render_unit

    shipped = (DEPLOY / "onprem-agent.service").read_text(encoding="utf-8")
    written = render_unit("/usr/local/bin/onprem-agent")
    assert _directives(shipped) == _directives(written)


@pytest.mark.parametrize("module", ["relay", "agent"])
def test_python_m_version(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert __version__ in proc.stdout


def test_readme_starts_with_demo_then_test() -> None:
    blocks = _code_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    assert "make demo" in blocks[0]
    assert "make test" in blocks[1]


@pytest.mark.parametrize(
    ("model_path", "heading"),
    [("relay.config:RelayConfig", "relay.yaml"), ("agent.config:AgentConfig", "agent.yaml")],
)
def test_readme_documents_every_config_key(model_path: str, heading: str) -> None:
    module_name, _, class_name = model_path.partition(":")
    module = __import__(module_name, fromlist=[class_name])
    model = getattr(module, class_name)
    text = README.read_text(encoding="utf-8")
    start = text.index(f"### `{heading}`")
    end = text.find("\n### ", start + 1)
    section = text[start : end if end > 0 else None]
    internal = {"base_dir"}  # set by the loader, not by users
    undocumented = [
        key for key in _keys(model) if key not in internal and f"`{key}`" not in section
    ]
    assert not undocumented, f"README's {heading} table lacks {undocumented}"


def test_ci_entry_point_runs_make_test() -> None:
    run = ROOT / ".ci" / "run"
    mode = run.stat().st_mode
    assert mode & stat.S_IXUSR, ".ci/run must be executable"
    text = run.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^[^#\n]*\bmake test\b", text, flags=re.MULTILINE)


@pytest.mark.parametrize("script", ["scripts/demo.sh", "scripts/system-deps.sh", ".ci/run"])
def test_shell_scripts_parse(script: str) -> None:
    proc = subprocess.run(
        ["bash", "-n", str(ROOT / script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert proc.returncode == 0, proc.stderr
