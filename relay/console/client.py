"""The console talks to the relay's own REST API over loopback HTTP with the signed-in
user's API token: the console validates, authorizes and audits exactly as the API
does, and can never do what the API would refuse."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Test connection and Save & continue run the connection test (30 s at most by
# default, up to 300 s with http.timeout_s) and may wait for a token refresh.
API_TIMEOUT_S = 330.0


@dataclass
class ApiAnswer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> dict[str, Any]:
        """The ``{"code", "message", "details"}`` of an error answer."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return dict(self.body["error"])
        return {"code": "unavailable", "message": f"the API answered {self.status}", "details": []}

    def connections_in_use(self) -> list[str]:
        """The connections a 409 "in use" answer names."""
        return [
            str(d["connection_id"])
            for d in self.error.get("details") or []
            if isinstance(d, dict) and d.get("connection_id")
        ]

    def field_errors(self) -> dict[str, str]:
        """``{"http.base_uri": "must be an http:// or https:// URL", ...}``."""
        return self.errors_on(())

    def errors_on(self, fields: Collection[str]) -> dict[str, str]:
        """The field errors by form field: one on a list item (``http.headers.0.name``)
        goes to the longest of ``fields`` it is under, its message prefixed with the
        item (``item 1 (name): ...``); errors on other paths keep their name."""
        out: dict[str, str] = {}
        for detail in self.error.get("details") or []:
            if not (isinstance(detail, dict) and isinstance(detail.get("field"), str)):
                continue
            name, message = detail["field"], str(detail.get("message", "invalid"))
            if name not in fields:
                parent = max((f for f in fields if name.startswith(f + ".")), key=len, default="")
                if parent:
                    name, message = parent, f"{_item(name[len(parent) + 1 :])}: {message}"
            out[name] = f"{out[name]}; {message}" if name in out else message
        return out


class ApiClient:
    """Calls to ``/v1`` on this relay. ``base_url`` is set once the HTTP listener is
    bound (``relay.server``); until then every call answers 503."""

    def __init__(self) -> None:
        self.base_url: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def call(
        self,
        method: str,
        path: str,
        token: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> ApiAnswer:
        if self.base_url is None:
            return _unavailable("the relay's API is not listening yet")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=32),
            )
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                json=json_body,
                params=params,
                headers=headers,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                return ApiAnswer(response.status, body, dict(response.headers))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return _unavailable(f"the relay's API did not answer ({type(exc).__name__})")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _item(rest: str) -> str:
    """``"0.name"`` -> ``"item 1 (name)"``: list positions as people count them."""
    first, _, more = rest.partition(".")
    if not first.isdigit():
        return rest
    return f"item {int(first) + 1}" + (f" ({more})" if more else "")


def _unavailable(message: str) -> ApiAnswer:
    return ApiAnswer(503, {"error": {"code": "unavailable", "message": message, "details": []}})


def loopback_base(listen_host: str, port: int) -> str:
    """The URL this process reaches its own HTTP listener at."""
    host = listen_host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
