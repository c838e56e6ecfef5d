"""The request pipeline for HTTP connections (design sections 6 and 7).

build (URL, headers, body) -> concurrency budget -> pacing -> auth step -> send
(cloud: aiohttp + SSRF guard, redirects followed by hand; onpremise: aiohttp over
agent streams, TLS end to end) -> classify (auth error: refresh once via the auth
step, else ``auth_failed``; rate limit: wait Retry-After or back off within the
deadline, else ``rate_limited``) -> envelope, test verdict, or streamed proxy response.

Failures are ``UpstreamError`` with the design's codes; ``test`` never raises them,
it reports them in ``TestResult.error``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from relay.errors import NotFoundError, UpstreamError
from relay.hub import AgentHub
from relay.metrics import RelayMetrics
from relay.models.connection import (
    ConnectionIn,
    Ping,
    RequestIn,
    RequestOut,
    TestError,
    TestResult,
)
from relay.routing.auth import AuthContext, AuthStep, AuthStepFactory, default_auth_step
from relay.routing.bodies import envelope_body, envelope_headers, parse_for_paths
from relay.routing.failures import code_for_test_result, to_upstream_error
from relay.routing.onprem import OnPremConnector, stream_origin
from relay.routing.outgoing import (
    CREDENTIAL_HEADERS,
    OutgoingRequest,
    build_request,
    drop_hop_by_hop,
    same_origin,
)
from relay.routing.policy import is_auth_error, is_rate_limited, ping_verdict, rate_limit_wait
from relay.routing.pool import Budgets, Lease, SessionPool
from relay.routing.ssrf import DestinationGuard
from relay.routing.tls import build_ssl_context

log = structlog.get_logger("relay.routing")

Route = Literal["cloud", "onpremise"]

_DEFAULT_MAX_REDIRECTS = 10
_DEFAULT_POOL_IDLE_S = 120.0
_DEFAULT_KEEPALIVE_S = 30.0
_DEFAULT_MAX_RETRY_AFTER_S = 120.0
_DEFAULT_BACKOFF_INITIAL_S = 0.5
_DEFAULT_BACKOFF_MAX_S = 30.0
_DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_DEFAULT_REPING_CONCURRENCY = 8
_DEFAULT_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


class StoredConnectionLike(Protocol):
    """The fields of ``relay.registry`` StoredConnection the executor reads."""

    @property
    def id(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def spec(self) -> ConnectionIn: ...


class ConnectionStore(Protocol):
    """What the executor needs from the registry (``relay.registry.Registry``)."""

    async def get_connection(self, connection_id: str, account_id: str) -> Any: ...

    async def set_connection_state(
        self,
        connection_id: str,
        state: str,
        reason: str | None,
        *,
        tested_at: datetime | None = None,
    ) -> Any: ...

    async def list_connections_in_state(self, state: str) -> Sequence[Any]: ...


@dataclass
class _Ctx:
    account_id: str
    connection_id: str | None
    spec: ConnectionIn
    request_id: str
    route: Route
    log: Any
    target: str

    @property
    def budget_owner(self) -> str | None:
        """Whose concurrency budget and pacing apply: none for an unsaved connection."""
        return self.connection_id


@dataclass
class _Buffered:
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes
    parsed: Any


class ProxyResponse:
    """An upstream response being streamed back: status, headers (hop-by-hop removed)
    and ``body()``. ``release()`` (idempotent) returns the connection and the
    concurrency slot; ``body()`` calls it when it ends."""

    def __init__(
        self,
        *,
        status: int,
        headers: list[tuple[str, str]],
        route: Route,
        response: aiohttp.ClientResponse,
        on_release: Callable[[bool], Awaitable[None]],
        count_in: Callable[[int], None],
    ) -> None:
        self.status = status
        self.headers = headers
        self.route = route
        self._resp = response
        self._on_release = on_release
        self._count_in = count_in
        self._released = False
        self._complete = False

    async def body(self, chunk_size: int = _DEFAULT_CHUNK) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._resp.content.iter_chunked(chunk_size):
                self._count_in(len(chunk))
                yield chunk
            self._complete = True
        finally:
            await self.release()

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._complete:
            self._resp.release()
        else:
            self._resp.close()  # half-read: the connection cannot be reused
        await self._on_release(self._complete)


class HttpExecutor:
    """Executes requests for connections. One per relay process; ``close()`` it."""

    def __init__(
        self,
        *,
        hub: AgentHub,
        registry: ConnectionStore,
        deny_private_networks: bool = True,
        metrics: RelayMetrics | None = None,
        destination_guard: DestinationGuard | None = None,
        auth_steps: AuthStepFactory = default_auth_step,
        max_redirects: int = _DEFAULT_MAX_REDIRECTS,
        pool_idle_s: float = _DEFAULT_POOL_IDLE_S,
        keepalive_s: float = _DEFAULT_KEEPALIVE_S,
        max_retry_after_s: float = _DEFAULT_MAX_RETRY_AFTER_S,
        backoff_initial_s: float = _DEFAULT_BACKOFF_INITIAL_S,
        backoff_max_s: float = _DEFAULT_BACKOFF_MAX_S,
        max_response_bytes: int = _DEFAULT_MAX_RESPONSE_BYTES,
        reping_concurrency: int = _DEFAULT_REPING_CONCURRENCY,
    ) -> None:
        """``destination_guard``: the SSRF guard for cloud connections; by default
        ``DestinationGuard()`` when ``deny_private_networks``, none otherwise.
        ``auth_steps``: builds the auth step of each request (OAuth plugs in here)."""
        self.hub = hub
        self.registry = registry
        self.metrics = metrics or hub.metrics
        if destination_guard is None and deny_private_networks:
            destination_guard = DestinationGuard()
        self.guard = destination_guard if deny_private_networks else None
        self._auth_steps = auth_steps
        self.max_redirects = max_redirects
        self.keepalive_s = keepalive_s
        self.max_retry_after_s = max_retry_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_response_bytes = max_response_bytes
        self.reping_concurrency = reping_concurrency
        self._pool = SessionPool(self._new_session, idle_s=pool_idle_s)
        self._budgets = Budgets()

    # -- lifecycle --------------------------------------------------------------

    async def close(self) -> None:
        await self._pool.close()

    async def forget(self, connection_id: str) -> None:
        """Drop the pooled session of a deleted or changed connection (optional: a
        changed transport configuration is noticed anyway)."""
        await self._pool.forget(connection_id)

    def _new_session(self, spec: ConnectionIn) -> aiohttp.ClientSession:
        ssl_context = build_ssl_context(spec.http)
        connector: aiohttp.BaseConnector
        if spec.mode == "onpremise":
            assert spec.agent_id is not None
            connector = OnPremConnector(
                hub=self.hub,
                agent_id=spec.agent_id,
                ssl_context=ssl_context,
                keepalive_timeout=self.keepalive_s,
            )
        else:
            connector = aiohttp.TCPConnector(
                ssl=ssl_context,
                resolver=self.guard.resolver() if self.guard is not None else None,
                limit=0,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_s,
            )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            trust_env=False,
        )

    # -- public API -------------------------------------------------------------

    async def test(
        self,
        account_id: str,
        spec: ConnectionIn,
        *,
        connection_id: str | None = None,
        request_id: str,
    ) -> TestResult:
        """Test connection: send the ping through the pipeline and judge the answer."""
        ctx = self._ctx(account_id, connection_id, spec, request_id)
        ping = spec.http.ping or Ping()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.http.timeout_s
        status: int | None = None
        error: TestError | None = None
        code = "error"
        try:
            async with asyncio.timeout_at(deadline):
                result, _ = await self._exchange(
                    ctx,
                    lambda: build_request(
                        spec, method=ping.method, relative_uri=ping.relative_uri, body=ping.body
                    ),
                    deadline,
                )
            status = result.status
            verdict = ping_verdict(ping, result.status, result.parsed)
            code = str(status)
            if not verdict.ok:
                error = TestError(code="ping_failed", message=verdict.message or "ping failed")
        except Exception as exc:  # every failure becomes the result's error
            err = self._failure(ctx, exc)
            status, code = err.status, err.code
            error = TestError.model_validate(
                {"code": code_for_test_result(err.code), "message": err.message}
            )
        elapsed = loop.time() - started
        self._observe(ctx, code, elapsed)
        ctx.log.info(
            "connection_tested",
            ok=error is None,
            status=status,
            error_code=error.code if error else None,
            ms=round(elapsed * 1000, 1),
        )
        return TestResult(
            ok=error is None,
            route=ctx.route,
            status=status,
            latency_ms=round(elapsed * 1000, 3),
            error=error,
        )

    async def request(
        self,
        account_id: str,
        connection_id: str,
        spec: ConnectionIn,
        req: RequestIn,
        *,
        request_id: str,
    ) -> RequestOut:
        """Execute one request envelope. Raises ``UpstreamError``."""
        ctx = self._ctx(account_id, connection_id, spec, request_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.http.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                result, attempts = await self._exchange(
                    ctx,
                    lambda: build_request(
                        spec,
                        method=req.method,
                        relative_uri=req.relative_uri,
                        headers=req.headers,
                        body=req.body,
                        body_text=req.body_text,
                        body_base64=req.body_base64,
                    ),
                    deadline,
                )
        except Exception as exc:
            err = self._failure(ctx, exc)
            self._observe(ctx, err.code, loop.time() - started)
            if err.code == "auth_failed":
                await self._mark(ctx, "offline", err.message)
            elif err.code == "needs_authorization":
                await self._mark(ctx, "needs_authorization", err.message)
            raise err from None
        elapsed = loop.time() - started
        self._observe(ctx, str(result.status), elapsed)
        # The relay's access log line (api_request) already says status and time:
        # a plain success is a debug line here, a retried one stays at info.
        (ctx.log.info if attempts > 1 else ctx.log.debug)(
            "request_done",
            method=req.method,
            status=result.status,
            attempts=attempts,
            ms=round(elapsed * 1000, 1),
        )
        content_type = result.headers.get("Content-Type", "")
        return RequestOut(
            status=result.status,
            headers=envelope_headers(drop_hop_by_hop(result.headers)),
            route=ctx.route,
            attempts=attempts,
            **envelope_body(result.raw, content_type),
        )

    async def proxy(
        self,
        account_id: str,
        connection_id: str,
        spec: ConnectionIn,
        *,
        method: str,
        relative_uri: str,
        headers: Mapping[str, str] | CIMultiDictProxy[str],
        body: AsyncIterator[bytes] | None,
        request_id: str,
    ) -> ProxyResponse:
        """Open a streamed request: the request body is sent from ``body`` as it comes,
        the response is handed back once its headers arrive and streams through
        ``ProxyResponse.body()``. Auth applies; a 401/429 status (not a body path: that
        would mean buffering) is retried like in ``request`` only when there is no
        request body to replay; otherwise the upstream answer is passed through.
        Redirects are passed through too (a proxy does not follow them)."""
        ctx = self._ctx(account_id, connection_id, spec, request_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.http.timeout_s
        http = spec.http
        caller_headers = dict(drop_hop_by_hop(headers))
        content_length = next(
            (v for k, v in headers.items() if k.lower() == "content-length"), None
        )
        sent = 0

        async def counted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk

        stack = AsyncExitStack()
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await self._enter_budget(ctx, stack)
            lease = await self._pool.acquire(ctx.connection_id, spec)
            stack.push_async_callback(lease.release)
            auth = self._auth_steps(spec, AuthContext(account_id, connection_id, request_id))
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=http.timeout_s,
                sock_connect=http.timeout_s,
                sock_read=http.timeout_s,
            )
            refreshed = False
            limited = 0
            while True:
                out = build_request(
                    spec,
                    method=method,
                    relative_uri=relative_uri,
                    headers=caller_headers,
                    stream=counted(body) if body is not None else None,
                )
                if body is not None and content_length is not None:
                    out.headers["Content-Length"] = content_length
                await auth.apply(out)
                await self._pace(ctx, deadline)
                resp = None
                resp = await self._send(
                    ctx, lease, out, timeout=timeout, follow=False, auto_decompress=False
                )
                if (
                    body is None
                    and not refreshed
                    and is_auth_error(http.auth, resp.status, None)
                    and await auth.on_auth_error()
                ):
                    refreshed = True
                    resp.release()
                    continue
                if body is None and is_rate_limited(http.rate_limit, resp.status, None):
                    limited += 1
                    wait = self._rate_limit_wait(resp, ctx, limited, deadline)
                    if wait is not None:
                        resp.release()
                        await asyncio.sleep(wait)
                        continue
                break
        except BaseException as exc:
            if resp is not None:
                resp.close()
            await stack.aclose()
            if not isinstance(exc, Exception):
                raise
            err = self._failure(ctx, exc)
            self._observe(ctx, err.code, loop.time() - started)
            raise err from None
        assert resp is not None
        status = resp.status
        ctx.log.debug("proxy_started", method=method, status=status)
        count_in = self.metrics.bytes_total.labels(direction="in").inc

        async def on_release(complete: bool) -> None:
            self.metrics.bytes_total.labels(direction="out").inc(sent)
            await stack.aclose()
            elapsed = loop.time() - started
            self._observe(ctx, str(status) if complete else "aborted", elapsed)
            # Success is in the access log line (api_request); a cut stream is news.
            (ctx.log.debug if complete else ctx.log.info)(
                "proxy_done", status=status, complete=complete, ms=round(elapsed * 1000)
            )

        return ProxyResponse(
            status=status,
            headers=drop_hop_by_hop(resp.headers),
            route=ctx.route,
            response=resp,
            on_release=on_release,
            count_in=count_in,
        )

    # -- state ------------------------------------------------------------------

    async def record_test(self, connection_id: str, result: TestResult) -> None:
        """Store a stored connection's test outcome as its state."""
        now = datetime.now(UTC)
        if result.ok:
            await self.registry.set_connection_state(connection_id, "online", None, tested_at=now)
            return
        assert result.error is not None
        state = "needs_authorization" if result.error.code == "needs_authorization" else "offline"
        await self.registry.set_connection_state(
            connection_id, state, result.error.message, tested_at=now
        )

    async def reping_once(self) -> int:
        """Test every offline connection once; those that pass go online. Returns how
        many came back."""
        offline = list(await self.registry.list_connections_in_state("offline"))
        if not offline:
            return 0
        limit = asyncio.Semaphore(self.reping_concurrency)
        back = 0

        async def one(conn: StoredConnectionLike) -> None:
            nonlocal back
            async with limit:
                result = await self.test(
                    conn.account_id, conn.spec, connection_id=conn.id, request_id=new_request_id()
                )
                await self.record_test(conn.id, result)
                if result.ok:
                    back += 1
                    log.info("connection_online", connection_id=conn.id)

        outcomes = await asyncio.gather(*(one(c) for c in offline), return_exceptions=True)
        for conn, outcome in zip(offline, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("reping_failed", connection_id=conn.id, error=repr(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
        return back

    async def run_repinger(self, interval_s: float) -> None:
        """Forever: re-test offline connections every ``interval_s``. Cancel to stop."""
        while True:
            try:
                await self.reping_once()
            except Exception as exc:  # a registry hiccup must not end the loop
                log.warning("reping_round_failed", error=repr(exc))
            await self._pool.sweep()
            await asyncio.sleep(interval_s)

    # -- the pipeline -----------------------------------------------------------

    def _ctx(
        self, account_id: str, connection_id: str | None, spec: ConnectionIn, request_id: str
    ) -> _Ctx:
        url = URL(spec.http.base_uri)
        target = f"{url.host}:{url.port}"
        bound = log.bind(
            connection_id=connection_id,
            request_id=request_id,
            route=spec.mode,
            agent_id=spec.agent_id,
        )
        return _Ctx(account_id, connection_id, spec, request_id, spec.mode, bound, target)

    async def _enter_budget(self, ctx: _Ctx, stack: AsyncExitStack) -> None:
        """Take a concurrency slot (queued while none is free)."""
        http = ctx.spec.http
        owner, limit = ctx.budget_owner, http.concurrency_level
        lender = http.borrow_concurrency_from
        if lender and lender != owner:
            try:
                other = await self.registry.get_connection(lender, ctx.account_id)
            except NotFoundError:
                ctx.log.warning("borrow_concurrency_lender_missing", lender=lender)
            else:
                owner, limit = lender, other.spec.http.concurrency_level
        if owner is None:
            return
        sem = self._budgets.semaphore(owner, limit)
        if sem is not None:
            await stack.enter_async_context(sem)

    async def _pace(self, ctx: _Ctx, deadline: float) -> None:
        wait_ms = ctx.spec.http.rate_limit.wait_between_requests_ms
        if not wait_ms or ctx.budget_owner is None:
            return
        loop = asyncio.get_running_loop()
        delay = self._budgets.pacing_delay(ctx.budget_owner, wait_ms / 1000, loop.time())
        if delay > 0:
            await asyncio.sleep(delay)

    def _rate_limit_wait(
        self, resp: aiohttp.ClientResponse, ctx: _Ctx, attempt: int, deadline: float
    ) -> float | None:
        return rate_limit_wait(
            resp.headers.get(ctx.spec.http.rate_limit.retry_after_header),
            attempt=attempt,
            remaining=deadline - asyncio.get_running_loop().time(),
            backoff_initial=self.backoff_initial_s,
            backoff_max=self.backoff_max_s,
            retry_after_max=self.max_retry_after_s,
        )

    async def _exchange(
        self, ctx: _Ctx, build: Callable[[], OutgoingRequest], deadline: float
    ) -> tuple[_Buffered, int]:
        """Send with retries (auth refresh once, rate limits within the deadline) and
        read the whole (bounded) response. Run inside ``timeout_at(deadline)``."""
        http = ctx.spec.http
        auth: AuthStep = self._auth_steps(
            ctx.spec, AuthContext(ctx.account_id, ctx.connection_id, ctx.request_id)
        )
        async with AsyncExitStack() as stack:
            await self._enter_budget(ctx, stack)
            lease = await self._pool.acquire(ctx.connection_id, ctx.spec)
            stack.push_async_callback(lease.release)
            attempts = 0
            refreshed = False
            limited = 0
            while True:
                attempts += 1
                out = build()
                await auth.apply(out)
                await self._pace(ctx, deadline)
                remaining = max(0.001, deadline - asyncio.get_running_loop().time())
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=remaining)
                resp = await self._send(ctx, lease, out, timeout=timeout, follow=True)
                try:
                    raw = await self._read_bounded(resp)
                finally:
                    resp.release()
                content_type = resp.headers.get("Content-Type", "")
                parsed = parse_for_paths(raw, content_type, http.media_type)
                if is_auth_error(http.auth, resp.status, parsed):
                    if not refreshed and await auth.on_auth_error():
                        refreshed = True
                        ctx.log.info("auth_refreshed_retrying", status=resp.status)
                        continue
                    raise UpstreamError(
                        "auth_failed",
                        f"{ctx.target} rejected the credentials (HTTP {resp.status})",
                        status=resp.status,
                    )
                if is_rate_limited(http.rate_limit, resp.status, parsed):
                    limited += 1
                    wait = self._rate_limit_wait(resp, ctx, limited, deadline)
                    if wait is None:
                        raise UpstreamError(
                            "rate_limited",
                            f"{ctx.target} is rate limiting (HTTP {resp.status}) and did not "
                            f"allow a retry within the {http.timeout_s:g} s deadline "
                            f"({attempts} attempts)",
                            status=resp.status,
                        )
                    ctx.log.info("rate_limited_waiting", wait_s=round(wait, 3), attempt=limited)
                    await asyncio.sleep(wait)
                    continue
                return _Buffered(resp.status, resp.headers, raw, parsed), attempts

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise UpstreamError(
                "response_too_large",
                f"the response body ({resp.content_length} bytes) exceeds {limit} bytes: "
                "use the proxy endpoint for large bodies",
                status=resp.status,
            )
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(_DEFAULT_CHUNK):
            buf += chunk
            if len(buf) > limit:
                raise UpstreamError(
                    "response_too_large",
                    f"the response body exceeds {limit} bytes: use the proxy endpoint",
                    status=resp.status,
                )
        self.metrics.bytes_total.labels(direction="in").inc(len(buf))
        return bytes(buf)

    async def _send(
        self,
        ctx: _Ctx,
        lease: Lease,
        out: OutgoingRequest,
        *,
        timeout: aiohttp.ClientTimeout,
        follow: bool,
        auto_decompress: bool = True,
    ) -> aiohttp.ClientResponse:
        """One request, following redirects by hand so that every hop passes the SSRF
        guard and credentials stay with the connection's origin."""
        method = out.method
        url = out.url
        headers = CIMultiDict(out.headers)
        data = out.encoded_body()
        if isinstance(data, bytes):
            self.metrics.bytes_total.labels(direction="out").inc(len(data))
        token = stream_origin.set(f"{ctx.connection_id or 'con_unsaved'}/{ctx.request_id}")
        try:
            for _ in range(self.max_redirects + 1):
                if ctx.route == "cloud" and self.guard is not None:
                    self.guard.check_url(url)
                resp = await lease.session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    timeout=timeout,
                    auto_decompress=auto_decompress,
                )
                location = resp.headers.get("Location")
                if not follow or resp.status not in _REDIRECTS or not location:
                    return resp
                try:
                    nxt = url.join(URL(location))
                except ValueError:
                    return resp
                if nxt.scheme not in ("http", "https") or not nxt.host:
                    return resp
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    if method != "HEAD":
                        method = "GET"
                    data = None
                    headers.popall("Content-Type", None)
                elif data is not None and not isinstance(data, bytes):
                    return resp  # a streamed body cannot be sent again
                if not same_origin(nxt, out.url):
                    if data is not None and out.body_has_secret:
                        return resp  # the body carries the token: do not take it along
                    for name in out.secret_headers | CREDENTIAL_HEADERS:
                        headers.popall(name, None)
                ctx.log.info("redirect", status=resp.status, to_host=nxt.host)
                resp.release()
                url = nxt
            raise UpstreamError(
                "too_many_redirects", f"more than {self.max_redirects} redirects from {ctx.target}"
            )
        finally:
            stream_origin.reset(token)

    def _failure(self, ctx: _Ctx, exc: Exception) -> UpstreamError:
        if type(exc) is TimeoutError:  # the request's own deadline (asyncio.timeout_at)
            err = UpstreamError(
                "timeout",
                f"no answer from {ctx.target} within {ctx.spec.http.timeout_s:g} s",
            )
        else:
            err = to_upstream_error(exc, ctx.target)
        ctx.log.warning("upstream_failed", code=err.code, message=err.message, status=err.status)
        return err

    def _observe(self, ctx: _Ctx, code: str, seconds: float) -> None:
        self.metrics.requests_total.labels(route=ctx.route, code=code).inc()
        self.metrics.request_seconds.labels(route=ctx.route).observe(seconds)

    async def _mark(self, ctx: _Ctx, state: str, reason: str) -> None:
        if ctx.connection_id is None:
            return
        try:
            await self.registry.set_connection_state(ctx.connection_id, state, reason)
        except Exception as exc:  # the request's own error matters more
            ctx.log.warning("state_update_failed", state=state, error=repr(exc))
