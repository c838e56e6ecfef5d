"""OAuth 2.0 clients ("iClients", design section 6): what callers send and read back.

An iClient is the relay's registration at one authorization server: its client id and
secret, the provider's endpoints, how the relay authenticates at the token endpoint,
and how (and to which hosts) the access token is sent with API requests. Connections
with ``auth.type: oauth2`` name one by ``iclient_id``.

``client_secret`` is write-only: on read it shows as ``"********"`` when set; on write
``"********"`` keeps the stored value (as for connection secrets).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator

from relay.models.connection import MASK, Header, Model

ICLIENT_ID_PATTERN = r"^icl_[a-z0-9]+$"
NAME_MAX = 200
URL_MAX = 2048
CLIENT_ID_MAX = 1024
SECRET_MAX = 16384
DOMAINS_MAX = 100

GrantType = Literal["authorization_code", "client_credentials"]
ClientAuth = Literal["body", "basic"]
TokenLocation = Literal["header", "url", "body"]

# Plain http is accepted only for these hosts: the authorization servers that tests and
# local development run on loopback without TLS. Anywhere else the client secret, the
# authorization code and the tokens would cross the network in clear (RFC 6749 3.1,
# 3.2 and RFC 9700 2.6 require TLS for these endpoints).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# A DNS label (RFC 1123: letters, digits, hyphens; not starting or ending with one).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _no_control(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def check_endpoint_url(value: str) -> str:
    """An authorization server endpoint: ``https://`` (``http://`` only on loopback),
    a host, no credentials, no fragment (RFC 6749 3.1, 3.2)."""
    _no_control(value)
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http"):
        raise ValueError("must be an https:// URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("must name a host")
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValueError(
            "must be an https:// URL (http:// is accepted only for localhost, "
            "127.0.0.1 and ::1, for tests and local development)"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials: use client_id and client_secret")
    if parts.fragment or value.endswith("#"):
        raise ValueError("must not have a #fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def normalize_domain(value: str) -> str:
    """A host name for ``valid_domains``: lower case, trailing dot removed, IDNs as
    punycode; ``*.example.com`` (any subdomain, at any depth, not the bare domain) and
    IP addresses allowed. Anything with a scheme, port, path or stray wildcard is
    refused, so a typo cannot widen where tokens go."""
    v = value.strip().lower().rstrip(".")
    if not v:
        raise ValueError("must not be empty")
    if any(c in v for c in "/:@?#[] ") and not _is_ipv6(v):
        raise ValueError(
            f"{value!r} is not a host name: give a host like api.example.com "
            "(no scheme, port or path)"
        )
    if _is_ip(v):
        return str(ipaddress.ip_address(v))
    wildcard = v.startswith("*.")
    name = v[2:] if wildcard else v
    if "*" in name:
        raise ValueError(f"{value!r}: a wildcard is allowed only as a leading '*.'")
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid host name") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not a valid host name")
    if wildcard and len(labels) < 2:
        raise ValueError(f"{value!r}: a wildcard needs a domain with a dot (*.example.com)")
    return ("*." if wildcard else "") + ascii_name


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ipv6(value: str) -> bool:
    return ":" in value and _is_ip(value)


Domain = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(normalize_domain)]


class IClientIn(Model):
    """POST /v1/iclients (and the full document a PATCH is merged into)."""

    name: str = Field(min_length=1, max_length=NAME_MAX)
    grant_type: GrantType = "authorization_code"
    client_id: str = Field(min_length=1, max_length=CLIENT_ID_MAX)
    client_secret: str | None = Field(
        None, min_length=1, max_length=SECRET_MAX, validate_default=True
    )
    authorization_url: str | None = Field(None, max_length=URL_MAX, validate_default=True)
    token_url: str = Field(max_length=URL_MAX)
    revoke_url: str | None = Field(None, max_length=URL_MAX)
    pkce: bool = True
    client_auth: ClientAuth = "body"
    scope_delimiter: str = Field(" ", min_length=1, max_length=5)
    token_location: TokenLocation = "header"
    header_name: str = "Authorization"
    header_scheme: str | None = Field("Bearer", max_length=100)
    param_name: str = Field("access_token", min_length=1, max_length=200)
    valid_domains: list[Domain] = Field(min_length=1, max_length=DOMAINS_MAX)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return _no_control(v)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        return _no_control(v)

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("grant_type") == "client_credentials":
            raise ValueError("is required when grant_type is 'client_credentials'")
        return v

    @field_validator("authorization_url")
    @classmethod
    def _authorization_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if info.data.get("grant_type") == "authorization_code":
                raise ValueError("is required when grant_type is 'authorization_code'")
            return None
        return check_endpoint_url(v)

    @field_validator("token_url", "revoke_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return None if v is None else check_endpoint_url(v)

    @field_validator("scope_delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        return _no_control(v)

    @field_validator("header_name")
    @classmethod
    def _header_name(cls, v: str) -> str:
        try:
            return Header(name=v, value="").name
        except ValidationError as exc:
            # Re-raised flat, so the error sits at ``header_name``, not ``header_name.name``.
            raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None

    @field_validator("header_scheme")
    @classmethod
    def _header_scheme(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must be one word (no spaces or control characters)")
        return v

    @field_validator("param_name")
    @classmethod
    def _param_name(cls, v: str) -> str:
        return _no_control(v)

    @field_validator("valid_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))  # each one normalized by ``Domain``


class IClientOut(IClientIn):
    """What GET returns: the secret masked, plus read-only fields."""

    id: str = Field(pattern=ICLIENT_ID_PATTERN)
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_stored(
        cls, spec: IClientIn, *, id: str, created_at: datetime, updated_at: datetime
    ) -> IClientOut:
        doc = spec.model_dump()
        if doc.get("client_secret") is not None:
            doc["client_secret"] = MASK
        return cls.model_validate(
            {**doc, "id": id, "created_at": created_at, "updated_at": updated_at}
        )


class IClientList(Model):
    iclients: list[IClientOut]
