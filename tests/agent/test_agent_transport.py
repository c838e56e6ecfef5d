"""Locked-down networks: the agent through a real HTTP CONNECT proxy (tinyproxy, with
Basic credentials), SSH inside a WebSocket at /v1/tunnel (directly and behind nginx
terminating TLS with a private CA), and both combined."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tunnel_env import TIMEOUT, Relay

from agent.config import AgentConfig
from agent.daemon import Agent, connect
from agent.errors import TransportError
from agent.transport import build_connect_request, parse_connect_reply
from relay.wstunnel import setup_tunnel_route

PROXY_USER, PROXY_PASS = "alice", "s3cr3t-proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)  # polling a child process's port, bounded
                continue
            w.close()
            return


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    assert path, f"{name} is not installed: run 'make system-deps'"
    return path


@contextlib.asynccontextmanager
async def tinyproxy(tmp_path: Path, extra: str = "") -> AsyncIterator[int]:
    port = free_port()
    conf = tmp_path / f"tinyproxy-{port}.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\n"
        f"BasicAuth {PROXY_USER} {PROXY_PASS}\nLogLevel Warning\n{extra}"
    )
    proc = await asyncio.create_subprocess_exec(
        tool("tinyproxy"),
        "-d",
        "-c",
        str(conf),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_port(port)
        yield port
    finally:
        proc.terminate()
        async with asyncio.timeout(TIMEOUT):
            await proc.wait()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[int]:
    async with tinyproxy(tmp_path) as port:
        yield port


@pytest.fixture
async def ws_relay(relay: Relay) -> AsyncIterator[int]:
    """The relay's HTTP side with only the /v1/tunnel route."""
    app = web.Application()
    setup_tunnel_route(app, relay.endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert isinstance(site._server, asyncio.Server)
    yield int(site._server.sockets[0].getsockname()[1])
    await runner.cleanup()


def make_ca_and_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onprem test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


@pytest.fixture
def nginx_tls(tmp_path: Path, ws_relay: int) -> Iterator[tuple[int, Path]]:
    """nginx terminating TLS (private CA) in front of the relay's HTTP port."""
    ca_file, cert_file, key_file = make_ca_and_cert(tmp_path)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body;
  proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fastcgi;
  uwsgi_temp_path {tmp_path}/uwsgi;
  scgi_temp_path {tmp_path}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert_file};
    ssl_certificate_key {key_file};
    location /v1/tunnel {{
      proxy_pass http://127.0.0.1:{ws_relay};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    proc = subprocess.Popen(
        [tool("nginx"), "-c", str(conf), "-e", str(tmp_path / "nginx-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, ca_file
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def config_for(relay: Relay, address: str, allow: list[str], **extra: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "relay": {
                "address": address,
                "host_key": relay.host_key,
                **({"ca_file": str(extra.pop("ca_file"))} if "ca_file" in extra else {}),
            },
            "agent_id": relay.agent_id,
            "allow": allow,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            **extra,
        }
    )


async def run_agent_and_echo(relay: Relay, cfg: AgentConfig, echo_port: int) -> None:
    agent = Agent(cfg, relay.token)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(TIMEOUT):
            await agent.wait_connected()
            reader, writer = await relay.hub.open_stream(relay.agent_id, "127.0.0.1", echo_port)
            writer.write(b"through the wall" * 1000)
            writer.write_eof()
            answer = await reader.read()
            writer.close()
        assert answer[32:] == b"through the wall" * 1000
    finally:
        await agent.stop()
        async with asyncio.timeout(TIMEOUT):
            await task


def test_connect_request_and_reply() -> None:
    req = build_connect_request("relay.example.com", 2222, "YTpi")
    assert req.startswith(b"CONNECT relay.example.com:2222 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic YTpi\r\n" in req
    assert req.endswith(b"\r\n\r\n")
    assert build_connect_request("::1", 22, None).startswith(b"CONNECT [::1]:22 ")
    parse_connect_reply(b"HTTP/1.0 200 Connection established")
    with pytest.raises(TransportError, match="407"):
        parse_connect_reply(b"HTTP/1.1 407 Proxy Authentication Required")
    with pytest.raises(TransportError, match="refused"):
        parse_connect_reply(b"HTTP/1.1 403 Forbidden")
    with pytest.raises(TransportError, match="not HTTP"):
        parse_connect_reply(b"SSH-2.0-OpenSSH_9.2")


async def test_ssh_through_connect_proxy_with_credentials(
    relay: Relay, proxy: int, echo_server: tuple[int, list[int]]
) -> None:
    port, _ = echo_server
    cfg = config_for(
        relay,
        f"127.0.0.1:{relay.port}",
        [f"127.0.0.1:{port}"],
        proxy=f"http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:{proxy}",
    )
    await run_agent_and_echo(relay, cfg, port)


async def test_wrong_proxy_credentials_are_a_clear_transient_error(
    relay: Relay, proxy: int
) -> None:
    cfg = config_for(
        relay, f"127.0.0.1:{relay.port}", [], proxy=f"http://{PROXY_USER}:wrong@127.0.0.1:{proxy}"
    )
    with pytest.raises(TransportError, match="authentication"):
        async with asyncio.timeout(TIMEOUT):
            await connect(cfg, relay.token)


async def test_ssh_inside_websocket(
    relay: Relay, ws_relay: int, echo_server: tuple[int, list[int]]
) -> None:
    port, _ = echo_server
    cfg = config_for(relay, f"ws://127.0.0.1:{ws_relay}/v1/tunnel", [f"127.0.0.1:{port}"])
    await run_agent_and_echo(relay, cfg, port)


async def test_websocket_refuses_a_wrong_token_like_ssh(relay: Relay, ws_relay: int) -> None:
    from agent.errors import AuthRejectedError

    cfg = config_for(relay, f"ws://127.0.0.1:{ws_relay}/v1/tunnel", [])
    with pytest.raises(AuthRejectedError):
        async with asyncio.timeout(TIMEOUT):
            await connect(cfg, "oat_" + "y" * 43)


async def test_wss_behind_nginx_with_private_ca(
    relay: Relay, nginx_tls: tuple[int, Path], echo_server: tuple[int, list[int]]
) -> None:
    tls_port, ca_file = nginx_tls
    await wait_port(tls_port)
    port, _ = echo_server
    address = f"wss://localhost:{tls_port}/v1/tunnel"
    # Without trusting the private CA the agent refuses the relay's certificate.
    with pytest.raises(TransportError, match=r"SSL|certificate"):
        async with asyncio.timeout(TIMEOUT):
            await connect(config_for(relay, address, []), relay.token)
    cfg = config_for(relay, address, [f"127.0.0.1:{port}"], ca_file=ca_file)
    await run_agent_and_echo(relay, cfg, port)


async def test_wss_through_connect_proxy(
    relay: Relay, nginx_tls: tuple[int, Path], proxy: int, echo_server: tuple[int, list[int]]
) -> None:
    tls_port, ca_file = nginx_tls
    await wait_port(tls_port)
    port, _ = echo_server
    cfg = config_for(
        relay,
        f"wss://localhost:{tls_port}/v1/tunnel",
        [f"127.0.0.1:{port}"],
        ca_file=ca_file,
        proxy=f"http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:{proxy}",
    )
    await run_agent_and_echo(relay, cfg, port)


async def test_proxy_that_allows_only_https_wss_gets_through_ssh_does_not(
    relay: Relay, nginx_tls: tuple[int, Path], tmp_path: Path, echo_server: tuple[int, list[int]]
) -> None:
    tls_port, ca_file = nginx_tls
    await wait_port(tls_port)
    port, _ = echo_server
    async with tinyproxy(tmp_path, f"ConnectPort {tls_port}\n") as proxy_port:
        proxy_url = f"http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:{proxy_port}"
        ssh_cfg = config_for(relay, f"127.0.0.1:{relay.port}", [], proxy=proxy_url)
        with pytest.raises(TransportError, match="refused CONNECT"):
            async with asyncio.timeout(TIMEOUT):
                await connect(ssh_cfg, relay.token)
        cfg = config_for(
            relay,
            f"wss://localhost:{tls_port}/v1/tunnel",
            [f"127.0.0.1:{port}"],
            ca_file=ca_file,
            proxy=proxy_url,
        )
        await run_agent_and_echo(relay, cfg, port)
