"""A small authorization server for the OAuth edge cases, built on authlib's server
classes (``authlib.integrations.flask_oauth2.AuthorizationServer`` and the RFC 6749 /
7636 / 7009 grants and endpoint), running in a thread with werkzeug on port 0.

Why flask: authlib's server core is framework-agnostic, but its only maintained
adapters are flask and django; an aiohttp adapter would be our own code standing in
for the server we want to test against. flask is already required by
oidc-provider-mock, and a werkzeug thread keeps the server off the test's event loop
(so a blocked loop cannot hide behind a cooperative fake).

It offers: authorization code with required PKCE S256, refresh with or without
rotation (old refresh token revoked when rotating), client credentials, revocation,
a mode with no ``expires_in``, scripted token-endpoint failures, a resource API that
answers 401, a Slack-style one that answers ``200 {"ok": false, "error":
"invalid_auth"}``, and counters of token-endpoint calls.
"""

from __future__ import annotations

import collections
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from werkzeug.serving import make_server

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str | None
    redirect_uris: list[str] = field(default_factory=list)
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials")

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(
            client_secret.encode(), self.client_secret.encode()
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Code(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    access_token: str
    refresh_token: str | None
    client_id: str
    user: str | None
    scope: str
    issued_at: float
    expires_in: int
    access_revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return bool(self.expires_in) and self.issued_at + self.expires_in < time.time()

    def is_revoked(self) -> bool:
        return self.access_revoked

    def get_user(self) -> str | None:
        return self.user

    def get_client(self) -> Any:
        return None


@dataclass
class Scripted:
    status: int
    body: str | bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class AuthServer:
    """The server's state (shared with werkzeug's request threads: one lock) and its
    knobs. ``token_prefix`` / ``code_prefix`` make issued values easy to find in logs."""

    def __init__(
        self,
        *,
        token_prefix: str = "at-",
        refresh_prefix: str = "rt-",
        code_prefix: str = "code-",
    ) -> None:
        self.lock = threading.RLock()
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.codes_issued: list[str] = []
        self.tokens: list[Token] = []
        self.issued: list[dict[str, Any]] = []  # every token response, as sent
        self.token_calls: collections.Counter[str] = collections.Counter()
        self.revoke_calls = 0
        self.token_requests: list[dict[str, Any]] = []  # headers + form of each call
        self.scripted: list[Scripted] = []
        self.rotate_refresh_tokens = True
        self.expires_in = 3600
        self.deny_next = False
        self.token_prefix = token_prefix
        self.refresh_prefix = refresh_prefix
        self.code_prefix = code_prefix
        self.base_url = ""
        self.app = self._build_app()

    # -- setup --------------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        redirect_uris: list[str] | None = None,
    ) -> Client:
        client = Client(client_id, client_secret, redirect_uris or [])
        with self.lock:
            self.clients[client_id] = client
        return client

    def script(self, *responses: Scripted) -> None:
        """The next token-endpoint calls answer these, in order, instead of a token."""
        with self.lock:
            self.scripted.extend(responses)

    @property
    def total_token_calls(self) -> int:
        with self.lock:
            return sum(self.token_calls.values())

    def find(self, access_token: str) -> Token | None:
        with self.lock:
            return next((t for t in self.tokens if t.access_token == access_token), None)

    def revoke_everything(self) -> None:
        """What "the user removed the app at the provider" looks like."""
        with self.lock:
            for t in self.tokens:
                t.access_revoked = t.refresh_revoked = True

    def revoke_access_tokens(self) -> None:
        with self.lock:
            for t in self.tokens:
                t.access_revoked = True

    def expire_access_tokens(self) -> None:
        with self.lock:
            for t in self.tokens:
                t.issued_at = 0.0

    # -- the flask app --------------------------------------------------------------------

    def _build_app(self) -> flask.Flask:
        app = flask.Flask("oauth-test-server")
        server = AuthorizationServer(app, query_client=self._query_client, save_token=self._save)
        outer = self

        def access_token(client: Client, grant_type: str, user: Any, scope: str) -> str:
            return outer.token_prefix + secrets.token_urlsafe(24)

        def refresh_token(client: Client, grant_type: str, user: Any, scope: str) -> str:
            return outer.refresh_prefix + secrets.token_urlsafe(24)

        def expires(client: Client, grant_type: str) -> int:
            return outer.expires_in  # 0: authlib leaves expires_in out

        server.register_token_generator(
            "default", BearerTokenGenerator(access_token, refresh_token, expires)
        )

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

            def generate_authorization_code(self) -> str:
                code = outer.code_prefix + secrets.token_urlsafe(24)
                with outer.lock:
                    outer.codes_issued.append(code)
                return code

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = request.payload.data
                with outer.lock:
                    outer.codes[code] = Code(
                        code=code,
                        client_id=request.client.client_id,
                        redirect_uri=data.get("redirect_uri"),
                        scope=request.payload.scope or "",
                        user=request.user,
                        code_challenge=data.get("code_challenge"),
                        code_challenge_method=data.get("code_challenge_method"),
                    )

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                with outer.lock:
                    found = outer.codes.get(code)
                return found if found is not None and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                with outer.lock:
                    outer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> str:
                return authorization_code.user

        class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

            @property
            def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
                return outer.rotate_refresh_tokens

            def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
                with outer.lock:
                    for t in outer.tokens:
                        if t.refresh_token == refresh_token and not t.refresh_revoked:
                            return t
                return None

            def authenticate_user(self, refresh_token: Token) -> str | None:
                return refresh_token.user

            def revoke_old_credential(self, refresh_token: Token) -> None:
                with outer.lock:
                    refresh_token.access_revoked = True
                    if outer.rotate_refresh_tokens:
                        refresh_token.refresh_revoked = True

        class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        class Revocation(RevocationEndpoint):  # type: ignore[misc]
            CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
                with outer.lock:
                    for t in outer.tokens:
                        if token_string in (t.access_token, t.refresh_token):
                            return t
                return None

            def revoke_token(self, token: Token, request: Any) -> None:
                with outer.lock:
                    token.access_revoked = True
                    token.refresh_revoked = True

        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_grant(RefreshGrant)
        server.register_grant(ClientCredentials)
        server.register_endpoint(Revocation)

        @app.get("/authorize")
        def authorize() -> Any:
            # Our client must always use PKCE S256: refuse anything else outright.
            if flask.request.args.get("code_challenge_method") != "S256":
                return flask.jsonify(
                    error="invalid_request", error_description="S256 PKCE required"
                ), 400
            with outer.lock:
                deny, outer.deny_next = outer.deny_next, False
            try:
                grant = server.get_consent_grant(end_user="alice")
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            return server.create_authorization_response(
                grant=grant, grant_user=None if deny else "alice"
            )

        @app.post("/token")
        def token() -> Any:
            form = flask.request.form.to_dict()
            with outer.lock:
                outer.token_calls[form.get("grant_type", "?")] += 1
                outer.token_requests.append({"headers": dict(flask.request.headers), "form": form})
                scripted = outer.scripted.pop(0) if outer.scripted else None
            if scripted is not None:
                return flask.Response(
                    scripted.body,
                    status=scripted.status,
                    content_type=scripted.content_type,
                    headers=scripted.headers,
                )
            return server.create_token_response()

        @app.post("/json/token")
        def json_token() -> Any:
            """A provider that wants JSON token requests (the "Override access token
            HTTP headers" case): client credentials in a JSON body."""
            data = flask.request.get_json(silent=True)
            with outer.lock:
                outer.token_calls["json"] += 1
                outer.token_requests.append({"headers": dict(flask.request.headers), "json": data})
                client = outer.clients.get(str((data or {}).get("client_id")))
            if (
                not isinstance(data, dict)
                or data.get("grant_type") != "client_credentials"
                or client is None
                or not client.check_client_secret(str(data.get("client_secret")))
            ):
                return flask.jsonify(error="invalid_client"), 401
            return flask.jsonify(
                access_token=outer.token_prefix + "json", token_type="Bearer", expires_in=60
            )

        @app.post("/revoke")
        def revoke() -> Any:
            with outer.lock:
                outer.revoke_calls += 1
            return server.create_endpoint_response("revocation")

        def bearer() -> Token | None:
            header = flask.request.headers.get("Authorization", "")
            value = (
                header[7:]
                if header.startswith("Bearer ")
                else flask.request.args.get("access_token", "")
            )
            t = outer.find(value) if value else None
            if t is None or t.access_revoked or t.is_expired():
                return None
            return t

        @app.get("/api/me")
        def api_me() -> Any:
            t = bearer()
            if t is None:
                return flask.jsonify(error="invalid_token"), 401
            return flask.jsonify(ok=True, user=t.user, client=t.client_id)

        @app.get("/slack/me")
        def slack_me() -> Any:
            t = bearer()
            if t is None:
                return flask.jsonify(ok=False, error="invalid_auth")
            return flask.jsonify(ok=True, user=t.user)

        return app

    def _query_client(self, client_id: str) -> Client | None:
        with self.lock:
            return self.clients.get(client_id)

    def _save(self, token: dict[str, Any], request: Any) -> None:
        with self.lock:
            self.issued.append(dict(token))
            self.tokens.append(
                Token(
                    access_token=token["access_token"],
                    refresh_token=token.get("refresh_token")
                    or (
                        getattr(request, "refresh_token", None)
                        and request.refresh_token.refresh_token
                    ),
                    client_id=request.client.client_id,
                    user=request.user,
                    scope=token.get("scope", ""),
                    issued_at=time.time(),
                    expires_in=token.get("expires_in", 0),
                )
            )

    # -- running --------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[AuthServer]:
        httpd = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base_url = f"http://127.0.0.1:{httpd.server_port}"
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield self
        finally:
            httpd.shutdown()
            thread.join(5)
            httpd.server_close()
