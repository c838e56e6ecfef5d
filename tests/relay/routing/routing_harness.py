"""Helpers for the routing tests: certificates made with ``cryptography``, a real
aiohttp "API" server (cloud or on-prem) that records what it saw, and a TCP spy that
records the bytes between the agent and an on-prem server."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.models.connection import ConnectionIn

TIMEOUT = 10.0 * float(os.environ.get("ONPREM_TEST_TIMEOUT_FACTOR", "1"))


# -- certificates --------------------------------------------------------------------


@dataclass
class Issued:
    cert_pem: str
    key_pem: str

    def files(self, directory: Path, name: str) -> tuple[str, str]:
        c, k = directory / f"{name}.crt", directory / f"{name}.key"
        c.write_text(self.cert_pem)
        k.write_text(self.key_pem)
        return str(c), str(k)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


@dataclass
class CA:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "Test Private CA") -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self, common_name: str, *, server: bool = True, names: tuple[str, ...] = ("localhost",)
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        b = _builder(common_name, self.name, key.public_key()).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            critical=False,
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in names]
                    + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] * ("localhost" in names)
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        cert = b.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))


def server_context(
    issued: Issued, directory: Path, *, client_ca: CA | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*issued.files(directory, "server"))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.pem)
    return ctx


# -- the upstream API ------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A real HTTP API on 127.0.0.x:0 (http or https) with canned behaviours."""

    host: str = "127.0.0.1"
    ssl_context: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def count(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=1024**3)
        app.middlewares.append(self._record)
        r = app.router
        r.add_get("/ping", self._ping)
        r.add_get("/status", self._status)
        r.add_get("/xml", self._xml)
        r.add_route("*", "/echo", self._echo)
        r.add_get("/code/{code}", self._code)
        r.add_get("/auth-in-body", self._auth_in_body)
        r.add_get("/throttle-then-ok", self._throttle_then_ok)
        r.add_get("/throttle", self._throttle)
        r.add_get("/throttle-in-body", self._throttle_in_body)
        r.add_get("/hang", self._hang)
        r.add_get("/redirect", self._redirect)
        r.add_post("/redirect", self._redirect)
        r.add_get("/loop", self._loop)
        r.add_route("*", "/upload", self._upload)
        r.add_get("/download", self._download)
        r.add_get("/bytes", self._bytes)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))
        body = b"" if request.path in ("/upload",) else await request.read()
        self.seen.append(
            Seen(request.method, request.path, request.query_string, dict(request.headers), body)
        )
        return await handler(request)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"result": {"state": "up"}, "errors": [{"code": "none"}]})

    async def _xml(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "up")
        body = (
            '<?xml version="1.0"?>'
            '<response xmlns="urn:acme"><status code="7">' + state + "</status>"
            "<error><message>XML says " + state + "</message></error></response>"
        )
        return web.Response(text=body, content_type="application/xml")

    async def _echo(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path.split("?", 1)[0],
                "query": request.rel_url.raw_query_string,
                "headers": dict(request.headers),
                "body": self.seen[-1].body.decode("utf-8", "replace"),
            },
            headers={"X-Upstream": "yes", "Set-Cookie": "a=1"},
        )

    async def _code(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.json_response({"code": code}, status=code)

    async def _auth_in_body(self, request: web.Request) -> web.Response:
        return web.json_response({"errors": [{"code": "INVALID_TOKEN"}]})

    async def _throttle_then_ok(self, request: web.Request) -> web.Response:
        key = request.query.get("key", "t")
        if self.count(key) == 1:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "1"}
            )
        return web.json_response({"ok": True})

    async def _throttle(self, request: web.Request) -> web.Response:
        self.count("throttle")
        return web.json_response({"error": "slow down"}, status=429)

    async def _throttle_in_body(self, request: web.Request) -> web.Response:
        if self.count("throttle-in-body") == 1:
            return web.json_response({"fault": {"code": "RATE_LIMIT"}}, headers={"X-Wait": "0"})
        return web.json_response({"ok": True})

    async def _hang(self, request: web.Request) -> web.Response:
        self.hanging.set()
        await self.release.wait()
        return web.json_response({"late": True})

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def _loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def _upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            n += len(chunk)
        return web.json_response({"bytes": n, "sha256": digest.hexdigest()})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        total = int(request.query["n"])
        block = bytes(range(256)) * 256  # 64 KiB
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = total
        await resp.prepare(request)
        left = total
        while left:
            piece = block[: min(left, len(block))]
            await resp.write(piece)
            left -= len(piece)
        await resp.write_eof()
        return resp

    async def _bytes(self, request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)), content_type="application/octet-stream")


def download_digest(total: int) -> str:
    block = bytes(range(256)) * 256
    d = hashlib.sha256()
    left = total
    while left:
        piece = block[: min(left, len(block))]
        d.update(piece)
        left -= len(piece)
    return d.hexdigest()


# -- a TCP spy between the agent and an on-prem server -------------------------------


@dataclass
class Spy:
    """Forwards 127.0.0.1:port -> target, keeping the first bytes each way."""

    target_port: int
    client_bytes: bytearray = field(default_factory=bytearray)
    server_bytes: bytearray = field(default_factory=bytearray)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Spy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, keep: bytearray) -> None:
            try:
                while data := await r.read(65536):
                    if len(keep) < 1 << 20:
                        keep += data
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        await asyncio.gather(
            pump(reader, up_w, self.client_bytes), pump(up_r, writer, self.server_bytes)
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def spec(base_uri: str, **http: Any) -> ConnectionIn:
    """A connection spec; ``mode`` and ``agent_id`` are taken from the keywords."""
    mode = http.pop("mode", "cloud")
    agent_id = http.pop("agent_id", None)
    return ConnectionIn.model_validate(
        {"name": "c", "mode": mode, "agent_id": agent_id, "http": {"base_uri": base_uri, **http}}
    )
