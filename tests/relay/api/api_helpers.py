"""Helpers for the API tests: a JSON client per account, and ``StubExecutor``, a
stand-in for the executor at the boundary the API does not own (outbound HTTP)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from agent.config import AgentConfig
from agent.daemon import Agent
from relay.api.app import make_app
from relay.hub import AgentHub
from relay.keys import fingerprint, load_or_create_host_key
from relay.models.connection import ConnectionIn, RequestIn, RequestOut, TestError, TestResult
from relay.registry import Registry, SecretBox
from relay.sshd import SSHEndpoint

HOST_KEY = "SHA256:testtesttesttesttesttesttesttesttesttesttes"


@dataclass
class TestCall:
    __test__ = False
    account_id: str
    spec: ConnectionIn
    connection_id: str | None
    request_id: str


@dataclass
class StubProxyResponse:
    status: int
    headers: list[tuple[str, str]]
    route: str
    method: str = "GET"

    async def body(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        if self.method != "HEAD":  # like a real upstream: no body for HEAD
            yield b"proxied"

    async def release(self) -> None:
        return None


@dataclass
class StubExecutor:
    """What the API calls to test connections: records calls, answers ``result``."""

    result: TestResult = field(
        default_factory=lambda: TestResult(ok=True, route="cloud", status=200, latency_ms=1.0)
    )
    calls: list[TestCall] = field(default_factory=list)
    requests: list[tuple[str, RequestIn]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    proxied: list[tuple[str, str, str]] = field(default_factory=list)
    closed: bool = False
    registry: Any = None

    def fail_with(self, code: str = "ping_failed", message: str = "ping answered 500") -> None:
        self.result = TestResult(
            ok=False,
            route="cloud",
            status=500,
            latency_ms=2.0,
            error=TestError.model_validate({"code": code, "message": message}),
        )

    async def test(
        self,
        account_id: str,
        spec: ConnectionIn,
        *,
        connection_id: str | None = None,
        request_id: str,
    ) -> TestResult:
        self.calls.append(TestCall(account_id, spec, connection_id, request_id))
        return self.result.model_copy(update={"route": spec.mode})

    async def request(
        self,
        account_id: str,
        connection_id: str,
        spec: ConnectionIn,
        req: RequestIn,
        *,
        request_id: str,
    ) -> RequestOut:
        self.requests.append((connection_id, req))
        return RequestOut(status=200, headers={}, body=None, route=spec.mode, attempts=1)

    async def proxy(
        self,
        account_id: str,
        connection_id: str,
        spec: ConnectionIn,
        *,
        method: str,
        relative_uri: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None,
        request_id: str,
    ) -> StubProxyResponse:
        self.proxied.append((connection_id, method, relative_uri))
        return StubProxyResponse(200, [("Content-Type", "text/plain")], spec.mode, method)

    async def record_test(self, connection_id: str, result: TestResult) -> None:
        state = "online" if result.ok else "offline"
        reason = result.error.message if result.error else None
        await self.registry.set_connection_state(
            connection_id, state, reason, tested_at=datetime.now(UTC)
        )

    async def forget(self, connection_id: str) -> None:
        self.forgotten.append(connection_id)

    async def close(self) -> None:
        self.closed = True

    async def run_repinger(self, interval_s: float) -> None:
        raise NotImplementedError


class Api:
    """A JSON client for one account (``token=None``: no Authorization header)."""

    def __init__(self, session: ClientSession, base: str, token: str | None) -> None:
        self.session = session
        self.base = base
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        out.update(extra or {})
        return out

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        kwargs: dict[str, Any] = {"headers": self.headers(headers), "params": params}
        if raw is not None:
            kwargs["data"] = io.BytesIO(raw)
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            return await Response.read(resp)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.call("POST", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.call("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.call("DELETE", path, **kw)


@dataclass
class Response:
    status: int
    headers: CIMultiDict[str]
    text: str

    @classmethod
    async def read(cls, resp: ClientResponse) -> Response:
        return cls(resp.status, CIMultiDict(resp.headers), await resp.text())

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error(self) -> dict[str, Any]:
        body = self.json
        assert set(body) >= {"error"}, body
        assert set(body["error"]) == {"code", "message", "details"}, body
        err: dict[str, Any] = body["error"]
        return err

    def fields(self) -> set[str]:
        return {d["field"] for d in self.error["details"]}


@dataclass
class Env:
    registry: Registry
    hub: AgentHub
    executor: Any  # StubExecutor, or the real HttpExecutor
    server: TestServer
    base: str
    a: Api  # account "acme"
    b: Api  # account "globex"
    anon: Api
    account_a: str
    account_b: str
    db_path: Path | None


def http_spec(name: str = "orders", **http: Any) -> dict[str, Any]:
    """A minimal valid cloud connection body."""
    return {"name": name, "http": {"base_uri": "https://api.example.com/v2", **http}}


TIMEOUT = 10.0 * float(os.environ.get("ONPREM_TEST_TIMEOUT_FACTOR", "1"))


@asynccontextmanager
async def ssh_endpoint(env: Env, tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    """The real SSH endpoint on 127.0.0.1:0 for ``env``'s hub and registry: (port,
    host key fingerprint)."""
    key = load_or_create_host_key(tmp_path / "host_key")
    endpoint = SSHEndpoint(
        registry=env.registry,
        hub=env.hub,
        host_key=key,
        node_id="api-test",
        keepalive_interval=1.0,
        # Long: drops after a rotation must come from the API, not from this loop.
        token_recheck_interval=3600.0,
        presence_interval=0.5,
    )
    port = await endpoint.start("127.0.0.1", 0)
    try:
        yield port, fingerprint(key)
    finally:
        await env.hub.close(0.5)
        await endpoint.close()


def make_agent(
    port: int, host_key: str, agent_id: str, token: str, allow: list[str] | None = None
) -> Agent:
    config = AgentConfig.model_validate(
        {
            "relay": {"address": f"127.0.0.1:{port}", "host_key": host_key},
            "agent_id": agent_id,
            "allow": allow or [],
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
        }
    )
    return Agent(config, token)


@asynccontextmanager
async def running_env(
    database_url: str,
    secret_box: SecretBox,
    make_executor: Callable[[AgentHub, Registry], Any],
) -> AsyncIterator[Env]:
    """The relay's HTTP app on 127.0.0.1:0 with accounts "acme" (a) and "globex" (b)."""
    registry = await Registry.open(database_url, secrets=secret_box)
    await registry.upgrade()
    acc_a, token_a = await registry.create_account("acme")
    acc_b, token_b = await registry.create_account("globex")
    hub = AgentHub()
    executor = make_executor(hub, registry)
    app = make_app(
        hub,
        registry,
        {"listening": True},
        secrets=secret_box,
        executor=executor,
        host_key=HOST_KEY,
    )
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with ClientSession() as session:
            yield Env(
                registry=registry,
                hub=hub,
                executor=executor,
                server=server,
                base=base,
                a=Api(session, base, token_a),
                b=Api(session, base, token_b),
                anon=Api(session, base, None),
                account_a=acc_a.id,
                account_b=acc_b.id,
                db_path=registry.sqlite_path,
            )
    finally:
        await server.close()
        await registry.close()
