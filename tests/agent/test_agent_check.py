"""`onprem-agent check` against a real relay: a checklist with a fix per failure."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import yaml
from tunnel_env import TIMEOUT, Relay


async def run_check(tmp_path: Path, relay: Relay, allow: list[str], token: str) -> tuple[int, str]:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "relay": {"address": f"127.0.0.1:{relay.port}", "host_key": relay.host_key},
                "agent_id": relay.agent_id,
                "token_file": str(token_file),
                "allow": allow,
                "dial_timeout_s": 2,
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "check",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(TIMEOUT * 3):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_check_passes_and_probes_allowlist_entries(
    relay: Relay, echo_server: tuple[int, list[int]], tmp_path: Path
) -> None:
    port, _ = echo_server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    allow = [f"127.0.0.1:{port}", f"127.0.0.1:{closed}", "*.corp.example:443"]
    code, out = await run_check(tmp_path, relay, allow, relay.token)
    assert code == 0, out
    assert "[ok] SSH: token accepted" in out
    assert f"[ok] allow 127.0.0.1:{port}: 127.0.0.1:{port} reachable" in out
    assert f"[warn] allow 127.0.0.1:{closed}" in out
    assert "[info] allow *.corp.example:443: a pattern" in out
    assert "Traceback" not in out


async def test_check_reports_a_rejected_token_with_a_fix(relay: Relay, tmp_path: Path) -> None:
    code, out = await run_check(tmp_path, relay, ["127.0.0.1:80"], "oat_" + "z" * 43)
    assert code == 1
    assert "[ok] SSH: host key" in out
    assert "[FAIL] SSH: the relay rejected the access token" in out
    assert "fix:" in out
    assert "z" * 43 not in out
