"""iClient models: validation names every bad field; the secret is masked on read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from relay.models.connection import MASK
from relay.models.iclient import IClientIn, IClientOut, normalize_domain


def doc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Acme app",
        "grant_type": "authorization_code",
        "client_id": "abc",
        "client_secret": "s3cret",
        "authorization_url": "https://auth.acme.com/authorize",
        "token_url": "https://auth.acme.com/token",
        "valid_domains": ["api.acme.com"],
    }
    base.update(overrides)
    return base


def bad_fields(data: dict[str, Any]) -> set[str]:
    with pytest.raises(pydantic.ValidationError) as info:
        IClientIn.model_validate(data)
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_defaults_follow_the_design() -> None:
    c = IClientIn.model_validate(doc())
    assert c.pkce is True
    assert c.client_auth == "body"
    assert c.scope_delimiter == " "
    assert (c.token_location, c.header_name, c.header_scheme, c.param_name) == (
        "header",
        "Authorization",
        "Bearer",
        "access_token",
    )
    assert c.revoke_url is None


def test_every_bad_field_is_named() -> None:
    data = doc(
        name=" ",
        grant_type="password",
        token_url="ftp://x",
        revoke_url="http://evil.example.com/revoke",
        client_auth="digest",
        token_location="cookie",
        header_name="Bad Header",
        header_scheme="two words",
        valid_domains=["https://api.acme.com/path"],
        unknown=1,
    )
    assert bad_fields(data) >= {
        "name",
        "grant_type",
        "token_url",
        "revoke_url",
        "client_auth",
        "token_location",
        "header_name",
        "header_scheme",
        "valid_domains.0",
        "unknown",
    }


def test_cross_field_rules_name_the_field() -> None:
    assert bad_fields(doc(authorization_url=None)) == {"authorization_url"}
    cc = doc(grant_type="client_credentials", authorization_url=None, client_secret=None)
    assert bad_fields(cc) == {"client_secret"}
    ok = IClientIn.model_validate(doc(grant_type="client_credentials", authorization_url=None))
    assert ok.authorization_url is None
    # A public client (PKCE, no secret) is fine for the authorization code grant.
    assert IClientIn.model_validate(doc(client_secret=None)).client_secret is None


@pytest.mark.parametrize(
    "url",
    [
        "http://auth.acme.com/token",  # clear text to the internet
        "https://user:pw@auth.acme.com/token",
        "https://auth.acme.com/token#frag",
        "https:///token",
        "https://auth.acme.com:99999/token",
        "javascript:alert(1)",
        "https://auth.acme.com/\ntoken",
    ],
)
def test_endpoint_urls_must_be_https(url: str) -> None:
    assert bad_fields(doc(token_url=url)) == {"token_url"}


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080/token", "http://127.0.0.1:5000/token", "http://[::1]:5000/token"],
)
def test_http_is_allowed_on_loopback_for_tests_and_local_development(url: str) -> None:
    assert IClientIn.model_validate(doc(token_url=url)).token_url == url


def test_valid_domains_are_normalized_and_checked() -> None:
    c = IClientIn.model_validate(
        doc(valid_domains=["API.Acme.com.", "*.Acme.com", "api.acme.com", "10.0.0.1", "bücher.de"])
    )
    assert c.valid_domains == ["api.acme.com", "*.acme.com", "10.0.0.1", "xn--bcher-kva.de"]
    assert bad_fields(doc(valid_domains=[])) == {"valid_domains"}
    for bad in ["*", "*.com", "a.*.com", "api.acme.com:443", "-bad-.com", "a b.com", ""]:
        assert bad_fields(doc(valid_domains=[bad])) == {"valid_domains.0"}, bad
    assert normalize_domain("::1") == "::1"


def test_out_masks_the_secret_and_adds_read_only_fields() -> None:
    now = datetime.now(UTC)
    spec = IClientIn.model_validate(doc())
    out = IClientOut.from_stored(spec, id="icl_abc123", created_at=now, updated_at=now)
    assert out.client_secret == MASK
    assert out.id == "icl_abc123"
    assert "s3cret" not in out.model_dump_json()
    public = IClientIn.model_validate(doc(client_secret=None))
    assert (
        IClientOut.from_stored(public, id="icl_x", created_at=now, updated_at=now).client_secret
        is None
    )
