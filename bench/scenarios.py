"""The scenarios of ``make bench`` (design section 8), each set up on 127.0.0.1 only:

- ``direct``:       wrk -> nginx
- ``openssh``:      wrk -> sshd's ``-R`` port -> OpenSSH client -> nginx (the anchor)
- ``tunnel``:       wrk -> relay ``local_forwards`` listener -> AgentHub.open_stream ->
                    SSH channel -> ``onprem-agent`` -> nginx
- ``relay_onprem``: wrk -> relay ``/v1/connections/{id}/proxy/...`` -> tunnel -> nginx
- ``relay_cloud``:  the same for a ``mode: cloud`` connection (relay HTTP overhead alone)

nginx runs ``worker_processes 1``: the machine has two cores, and the systems under
test (sshd + ssh, relay + agent) need the other one; every scenario hits the same
nginx, so the comparison stays fair.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import PY, BenchError, Proc, Procs, free_port, http_get, http_json, run
from bench.relayctl import create_agents, init_relay, write_config

SMALL_BODY = b"hello from nginx, small body\n"
BULK_SIZE = 1024 * 1024
# HTTP statuses that mean "this relay build has no such endpoint yet".
_NOT_IMPLEMENTED = (404, 405, 501)


class Skip(Exception):
    """The scenario is not available in this build; the message says why."""


@dataclass
class Target:
    """Where wrk points: ``base`` + the workload's path (``small`` or ``1m``)."""

    base: str
    headers: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path


@dataclass
class RelayStack:
    dir: Path
    relay: Proc
    agent: Proc
    ssh_port: int
    http_port: int
    forward_port: int
    agent_id: str
    api_token: str
    host_key: str


class Env:
    """Processes and files shared by the scenarios of one run (started lazily)."""

    def __init__(self, workdir: Path, procs: Procs) -> None:
        self.dir = workdir
        self.procs = procs
        self.nginx_port: int | None = None
        self.relay_stack: RelayStack | None = None
        self.relay_error: BenchError | None = None
        self.notes: dict[str, Any] = {}

    # -- nginx ---------------------------------------------------------------------

    def nginx(self) -> int:
        if self.nginx_port is not None:
            return self.nginx_port
        if shutil.which("nginx") is None:
            raise BenchError("nginx not found (make bench installs it: apt-get install nginx)")
        d = self.dir / "nginx"
        (d / "www").mkdir(parents=True)
        # The worker may run as another user: it must read the files.
        for p in (self.dir, d, d / "www"):
            p.chmod(0o755)
        (d / "www" / "1m").write_bytes(os.urandom(BULK_SIZE))
        (d / "www" / "1m").chmod(0o644)
        port = free_port()
        built = _nginx_build_flags()
        temp_paths = "".join(
            f"    {m}_temp_path {d}/{m}_temp;\n"
            for m in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if m in ("client_body", "proxy") or f"--without-http_{m}_module" not in built
        )
        conf = d / "nginx.conf"
        body = SMALL_BODY.decode().replace("\n", "\\n")
        conf.write_text(
            f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
{temp_paths}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /small {{ default_type text/plain; return 200 "{body}"; }}
        location = /1m {{ default_type application/octet-stream; alias {d}/www/1m; }}
    }}
}}
"""
        )
        proc = self.procs.start(
            "nginx",
            ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)],
            d / "stdout.log",
        )
        proc.wait_port(port)
        self.nginx_port = port
        self.notes["nginx_worker_processes"] = 1
        return port

    # -- relay + agent ---------------------------------------------------------------

    def session_drops(self) -> int:
        """How many agent sessions the relay has lost so far (``session_down``)."""
        if self.relay_stack is None:
            return 0
        return len(self.relay_stack.relay.log_events("session_down"))

    def relay(self) -> RelayStack:
        """One relay (with a ``local_forwards`` listener) and one agent, shared by the
        tunnel, relay_onprem and relay_cloud scenarios."""
        if self.relay_stack is not None:
            return self.relay_stack
        if self.relay_error is not None:
            raise self.relay_error
        try:
            self.relay_stack = self._start_relay()
        except BenchError as exc:
            self.relay_error = exc
            raise
        return self.relay_stack

    def _start_relay(self) -> RelayStack:
        nginx_port = self.nginx()
        d = self.dir / "relay"
        # relay_cloud calls nginx on 127.0.0.1: allow private targets for mode=cloud.
        config, cfg = init_relay(d, cloud={"deny_private_networks": False})
        api_token, agents = create_agents(config, "bench", 1)
        agent = agents[0]
        cfg["local_forwards"] = [
            {
                "listen": "127.0.0.1:0",
                "agent_id": agent["id"],
                "target": f"127.0.0.1:{nginx_port}",
            }
        ]
        write_config(config, cfg)
        relay = self.procs.start(
            "relay", [PY, "-m", "relay", "serve", "--config", str(config)], d / "relay.log"
        )
        up = relay.wait_event("relay_listening", timeout=30)
        ssh_port, http_port = int(up["ssh_port"]), int(up["http_port"])
        forward_port = int(up["local_forward_ports"][0])

        agent_yaml = d / "agent.yaml"
        agent_yaml.write_text(
            yaml.safe_dump(
                {
                    "relay": {"address": f"127.0.0.1:{ssh_port}", "host_key": up["host_key"]},
                    "agent_id": agent["id"],
                    "allow": [f"127.0.0.1:{nginx_port}"],
                    "log": {"level": "info", "format": "json"},
                },
                sort_keys=False,
            )
        )
        agent_proc = self.procs.start(
            "agent",
            [PY, "-m", "agent", "run", "--config", str(agent_yaml)],
            d / "agent.log",
            env={"ONPREM_AGENT_TOKEN": agent["token"]},
        )
        agent_proc.wait_event("tunnel_up", timeout=30)
        return RelayStack(
            dir=d,
            relay=relay,
            agent=agent_proc,
            ssh_port=ssh_port,
            http_port=http_port,
            forward_port=forward_port,
            agent_id=agent["id"],
            api_token=api_token,
            host_key=up["host_key"],
        )


def _nginx_build_flags() -> str:
    res = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=False)
    return res.stdout + res.stderr


# -- scenarios -----------------------------------------------------------------------


def setup_direct(env: Env) -> Target:
    return Target(f"http://127.0.0.1:{env.nginx()}/")


def setup_openssh(env: Env) -> Target:
    """sshd on a free port (temp config, generated host and client keys, only that key
    may log in) and ``ssh -N -R port:127.0.0.1:nginx``; both use OpenSSH's defaults for
    ciphers (chacha20-poly1305 first), as a stock deployment would."""
    nginx_port = env.nginx()
    sshd = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if Path(p).exists()), None
    )
    if sshd is None or shutil.which("ssh") is None:
        raise BenchError("OpenSSH not found (make bench installs openssh-server, -client)")
    d = env.dir / "openssh"
    d.mkdir()
    d.chmod(0o755)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")])
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    user = getpass.getuser()
    port, fwd_port = free_port(), free_port()
    if os.geteuid() == 0:
        # Privilege separation needs its empty directory (the Debian unit creates it).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    conf = d / "sshd_config"
    conf.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding remote
GatewayPorts no
X11Forwarding no
PermitTTY no
UseDNS no
PrintMotd no
LogLevel ERROR
"""
    )
    env.procs.start("sshd", [sshd, "-D", "-e", "-f", str(conf)], d / "sshd.log").wait_port(port)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    client = env.procs.start(
        "ssh",
        [
            "ssh", "-F", "/dev/null", "-N", "-T",
            "-i", str(d / "client_key"),
            "-p", str(port),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "LogLevel=ERROR",
            "-R", f"127.0.0.1:{fwd_port}:127.0.0.1:{nginx_port}",
            f"{user}@127.0.0.1",
        ],
        d / "ssh.log",
    )  # fmt: skip
    client.wait_port(fwd_port)
    return Target(f"http://127.0.0.1:{fwd_port}/")


def setup_tunnel(env: Env) -> Target:
    stack = env.relay()
    return Target(f"http://127.0.0.1:{stack.forward_port}/")


def _connection(env: Env, mode: str) -> Target:
    stack = env.relay()
    nginx_port = env.nginx()
    api = f"http://127.0.0.1:{stack.http_port}"
    auth = {"Authorization": f"Bearer {stack.api_token}"}
    body: dict[str, Any] = {
        "name": f"bench {mode}",
        "type": "http",
        "mode": mode,
        "http": {
            "base_uri": f"http://127.0.0.1:{nginx_port}",
            "media_type": "json",
            "auth": {"type": "none"},
        },
    }
    if mode == "onpremise":
        body["agent_id"] = stack.agent_id
    status, answer = http_json("POST", f"{api}/v1/connections?verify=false", body, auth)
    if status in _NOT_IMPLEMENTED:
        raise Skip(f"the relay's HTTP API is not there yet: POST /v1/connections answered {status}")
    if status not in (200, 201) or not isinstance(answer, dict) or "id" not in answer:
        raise Skip(f"POST /v1/connections?verify=false answered {status}: {str(answer)[:200]}")
    target = Target(f"{api}/v1/connections/{answer['id']}/proxy/", auth)
    status, text = http_get(target.url("small"), auth)
    if status in _NOT_IMPLEMENTED and b"no such resource" in text:
        raise Skip(
            "the relay's proxy endpoint is not there yet: "
            f"GET /v1/connections/{{id}}/proxy/small answered {status}"
        )
    return target


def setup_relay_onprem(env: Env) -> Target:
    return _connection(env, "onpremise")


def setup_relay_cloud(env: Env) -> Target:
    return _connection(env, "cloud")


SCENARIOS: dict[str, Callable[[Env], Target]] = {
    "direct": setup_direct,
    "openssh": setup_openssh,
    "tunnel": setup_tunnel,
    "relay_onprem": setup_relay_onprem,
    "relay_cloud": setup_relay_cloud,
}
# Scenarios that need the relay's HTTP API (being built): unavailable means skipped.
OPTIONAL = {"relay_onprem", "relay_cloud"}
# Scenarios whose path crosses the agent's SSH session.
THROUGH_AGENT = {"tunnel", "relay_onprem"}


def wait_ready(target: Target, timeout: float) -> float:
    """Seconds until one small request passes (the agent may be reconnecting)."""
    t0 = time.monotonic()
    while True:
        status, body = http_get(target.url("small"), target.headers, timeout=5)
        if status == 200 and body == SMALL_BODY:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{target.base} not answering after {timeout:.0f} s: {status}")
        time.sleep(0.1)


def verify(name: str, target: Target) -> None:
    """One request per path before any load: never benchmark an error page."""
    status, body = http_get(target.url("small"), target.headers)
    if status != 200 or body != SMALL_BODY:
        raise BenchError(f"{name}: GET small answered {status}: {body[:200]!r}")
    status, body = http_get(target.url("1m"), target.headers, timeout=30)
    if status != 200 or len(body) != BULK_SIZE:
        raise BenchError(f"{name}: GET 1m answered {status} with {len(body)} bytes")
