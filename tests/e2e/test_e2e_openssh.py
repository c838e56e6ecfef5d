"""Design 2.4's requirement: a stock OpenSSH client works as an agent
(``ssh -N -R 0 AGENT_ID@relay -p PORT``, the access token as password)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from e2e_harness import (
    MIB,
    Procs,
    Relay,
    child_env,
    client_session,
    echo_roundtrip,
    random_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _openssh_version(ssh: str) -> tuple[int, int] | None:
    res = subprocess.run(
        [ssh, "-V"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", res.stderr + res.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _password_wrapping(ssh: str, token_file: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """How to hand ssh the password non-interactively: SSH_ASKPASS with
    SSH_ASKPASS_REQUIRE=force (OpenSSH >= 8.4: no extra package, no pty, and the
    process we start is ssh itself), else sshpass if installed; else skip."""
    version = _openssh_version(ssh)
    if version is not None and version >= (8, 4):
        askpass = tmp / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\nexec cat '{token_file}'\n", encoding="utf-8")
        askpass.chmod(stat.S_IRWXU)
        env = child_env({"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"})
        return [], env
    sshpass = shutil.which("sshpass")
    if sshpass is not None:
        return [sshpass, "-f", str(token_file)], child_env()
    pytest.skip(f"OpenSSH {version} has no SSH_ASKPASS_REQUIRE and sshpass is not installed")


async def test_openssh_client_works_as_agent(relay: Relay, procs: Procs, tmp_path: Path) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("OpenSSH client (ssh) not installed")
    token_file = tmp_path / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(relay.agent.token + "\n")
    prefix, env = _password_wrapping(ssh, token_file, tmp_path)
    env.pop("SSH_AUTH_SOCK", None)
    env["HOME"] = str(tmp_path)  # no ~/.ssh of whoever runs the tests

    argv = [
        *prefix,
        ssh,
        "-v",  # for the failure report only
        "-N",
        "-F", "/dev/null",
        "-R", "0",
        "-p", str(relay.ssh_port),
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password",
        "-o", "NumberOfPasswordPrompts=1",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=5",
        f"{relay.agent.id}@127.0.0.1",
    ]  # fmt: skip
    assert relay.proc is not None
    mark = relay.proc.mark()
    client = await procs.start("openssh", argv, env=env)

    await relay.proc.wait_event(
        "session_up", after=mark, where={"agent_id": relay.agent.id}, timeout=20
    )
    # ssh registers the dynamic forward when the relay's answer arrives, and says so.
    await client.wait_line(
        lambda x: "Allocated port" in x, timeout=10, what="'Allocated port' from ssh"
    )
    seen_key = next(
        (m.group(1) for x in client.lines if (m := re.search(r"host key: \S+ (SHA256:\S+)", x))),
        None,
    )
    assert seen_key == relay.host_key

    info = await relay.wait_sessions(1)
    assert info["sessions"][0]["client_version"].startswith("OpenSSH"), info

    async with client_session() as session:
        await echo_roundtrip(session, relay.forward_url, MIB)
        await random_roundtrip(session, relay.forward_url, MIB)
        await asyncio.gather(
            *(
                (echo_roundtrip if i % 2 else random_roundtrip)(session, relay.forward_url, MIB)
                for i in range(6)
            )
        )
    assert client.returncode is None, client.tail()
