"""The iClient form <-> API JSON conversions of the console (pure functions)."""

from __future__ import annotations

from typing import Any

from relay.console.client import ApiAnswer
from relay.console.iclients import (
    FIELDS,
    MASK,
    NEW_VALUES,
    _retype_missing,
    field_errors,
    iclient_doc,
    iclient_values,
    posted_values,
    split_domains,
)
from relay.models.iclient import IClientIn


def form(**overrides: str) -> dict[str, str]:
    base = {
        "csrf_token": "x",
        "name": "Acme app",
        "grant_type": "authorization_code",
        "client_id": "acme-id",
        "client_secret": "s3cret",
        "authorization_url": "https://auth.acme.com/authorize",
        "token_url": "https://auth.acme.com/token",
        "revoke_url": "",
        "pkce": "on",
        "client_auth": "body",
        "scope_delimiter": "",
        "token_location": "header",
        "header_name": "Authorization",
        "header_scheme": "Bearer",
        "param_name": "access_token",
        "valid_domains": "api.acme.com\n*.acme.io",
    }
    base.update(overrides)
    return base


def stored_doc(**overrides: Any) -> dict[str, Any]:
    """An iClient as GET /v1/iclients/{id} shows it (secret masked)."""
    doc: dict[str, Any] = {
        "id": "icl_abc123",
        "name": "Acme app",
        "grant_type": "authorization_code",
        "client_id": "acme-id",
        "client_secret": MASK,
        "authorization_url": "https://auth.acme.com/authorize",
        "token_url": "https://auth.acme.com/token",
        "revoke_url": None,
        "pkce": True,
        "client_auth": "basic",
        "scope_delimiter": " ",
        "token_location": "header",
        "header_name": "Authorization",
        "header_scheme": "Bearer",
        "param_name": "access_token",
        "valid_domains": ["api.acme.com", "*.acme.io"],
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
    }
    doc.update(overrides)
    return doc


def test_create_document() -> None:
    doc = iclient_doc(form(), None)
    assert doc == {
        "name": "Acme app",
        "grant_type": "authorization_code",
        "client_id": "acme-id",
        "client_secret": "s3cret",
        "authorization_url": "https://auth.acme.com/authorize",
        "token_url": "https://auth.acme.com/token",
        "revoke_url": None,
        "pkce": True,
        "client_auth": "body",
        "scope_delimiter": " ",
        "token_location": "header",
        "header_name": "Authorization",
        "header_scheme": "Bearer",
        "param_name": "access_token",
        "valid_domains": ["api.acme.com", "*.acme.io"],
    }
    # Nothing but the iClient's own fields (no CSRF token) goes to the API.
    assert set(doc) == set(FIELDS)
    # The API's model takes it as it is.
    assert IClientIn.model_validate(doc).valid_domains == ["api.acme.com", "*.acme.io"]


def test_empty_optional_strings_become_null() -> None:
    doc = iclient_doc(form(client_secret="", revoke_url="  ", authorization_url=""), None)
    assert doc["client_secret"] is None
    assert doc["revoke_url"] is None
    assert doc["authorization_url"] is None


def test_required_strings_are_sent_stripped_so_the_api_names_them() -> None:
    doc = iclient_doc(form(name="  Acme  ", client_id="", token_url=" "), None)
    assert doc["name"] == "Acme"
    assert doc["client_id"] == ""
    assert doc["token_url"] == ""


def test_pkce_checkbox() -> None:
    assert iclient_doc(form(pkce="on"), None)["pkce"] is True
    without = form()
    del without["pkce"]
    assert iclient_doc(without, None)["pkce"] is False


def test_valid_domains_split_on_newlines_and_commas() -> None:
    raw = " api.acme.com ,b.acme.com\r\n\r\n*.acme.io,\n, "
    assert iclient_doc(form(valid_domains=raw), None)["valid_domains"] == [
        "api.acme.com",
        "b.acme.com",
        "*.acme.io",
    ]
    assert split_domains("") == []
    assert iclient_doc(form(valid_domains=" \n "), None)["valid_domains"] == []


def test_scope_delimiter() -> None:
    assert iclient_doc(form(scope_delimiter=""), None)["scope_delimiter"] == " "
    assert iclient_doc(form(scope_delimiter=","), None)["scope_delimiter"] == ","
    # As typed: a delimiter may be a space or contain one.
    assert iclient_doc(form(scope_delimiter=" "), None)["scope_delimiter"] == " "
    assert iclient_doc(form(scope_delimiter=", "), None)["scope_delimiter"] == ", "
    no_field = form()
    del no_field["scope_delimiter"]
    assert iclient_doc(no_field, None)["scope_delimiter"] == " "


def test_header_scheme_empty_means_none() -> None:
    # "" (not null: in a PATCH null would bring the default "Bearer" back); the API
    # stores "" as no scheme.
    doc = iclient_doc(form(header_scheme=" "), None)
    assert doc["header_scheme"] == ""
    assert IClientIn.model_validate(doc).header_scheme is None


def test_secret_on_edit() -> None:
    stored = stored_doc()
    # Empty: the stored one is kept.
    assert iclient_doc(form(client_secret=""), stored)["client_secret"] == MASK
    # Typed: replaced.
    assert iclient_doc(form(client_secret="new"), stored)["client_secret"] == "new"
    # None stored and none typed: null.
    none_stored = stored_doc(client_secret=None)
    assert iclient_doc(form(client_secret=""), none_stored)["client_secret"] is None
    # On create there is nothing to keep.
    assert iclient_doc(form(client_secret=""), None)["client_secret"] is None


def test_client_credentials_ignores_the_authorization_url() -> None:
    doc = iclient_doc(
        form(grant_type="client_credentials", authorization_url="not a url (hidden)"), None
    )
    assert doc["grant_type"] == "client_credentials"
    assert doc["authorization_url"] is None


def test_irrelevant_empty_token_fields_keep_their_values() -> None:
    # Token in the URL: an emptied header name is irrelevant, the stored one stays.
    stored = stored_doc(header_name="X-Token")
    doc = iclient_doc(form(token_location="url", header_name=""), stored)
    assert doc["header_name"] == "X-Token"
    assert iclient_doc(form(token_location="body", header_name=""), None)["header_name"] == (
        "Authorization"
    )
    # Token in a header: an emptied parameter name is irrelevant.
    assert iclient_doc(form(param_name=""), stored_doc(param_name="tok"))["param_name"] == "tok"
    assert iclient_doc(form(param_name=""), None)["param_name"] == "access_token"
    # Where they matter too, empty means the stored value or the default (the help
    # says so), never an invalid empty name.
    assert iclient_doc(form(header_name=""), stored)["header_name"] == "X-Token"
    assert iclient_doc(form(token_location="url", param_name=""), None)["param_name"] == (
        "access_token"
    )


def test_values_from_a_document() -> None:
    values = iclient_values(stored_doc())
    assert values == {
        "name": "Acme app",
        "grant_type": "authorization_code",
        "client_id": "acme-id",
        "client_secret": "",
        "authorization_url": "https://auth.acme.com/authorize",
        "token_url": "https://auth.acme.com/token",
        "revoke_url": "",
        "pkce": "on",
        "client_auth": "basic",
        "scope_delimiter": "",
        "token_location": "header",
        "header_name": "Authorization",
        "header_scheme": "Bearer",
        "param_name": "access_token",
        "valid_domains": "api.acme.com\n*.acme.io",
    }
    other = iclient_values(
        stored_doc(pkce=False, header_scheme=None, scope_delimiter=",", client_secret=None)
    )
    assert other["pkce"] == ""
    assert other["header_scheme"] == ""
    assert other["scope_delimiter"] == ","
    assert other["client_secret"] == ""


def test_values_never_hold_the_secret() -> None:
    # Even a document that carried a secret in clear never puts it in the form.
    assert iclient_values(stored_doc(client_secret="in-clear"))["client_secret"] == ""
    assert posted_values(form(client_secret="typed"))["client_secret"] == ""


def test_round_trip_keeps_the_document() -> None:
    stored = stored_doc()
    doc = iclient_doc(iclient_values(stored), stored)
    expected = {k: v for k, v in stored.items() if k in FIELDS}
    assert doc == expected


def test_round_trip_of_a_client_credentials_client_without_scheme() -> None:
    stored = stored_doc(
        grant_type="client_credentials",
        authorization_url=None,
        pkce=False,
        token_location="url",
        header_scheme=None,
        param_name="token",
        scope_delimiter=",",
    )
    doc = iclient_doc(iclient_values(stored), stored)
    assert doc == {**{k: v for k, v in stored.items() if k in FIELDS}, "header_scheme": ""}


def test_posted_values_keep_what_was_typed() -> None:
    posted = form(name="  Acme ", valid_domains="a.com,\nb.com", scope_delimiter=",")
    del posted["pkce"]
    values = posted_values(posted)
    assert values["name"] == "  Acme "
    assert values["valid_domains"] == "a.com,\nb.com"
    assert values["pkce"] == ""
    assert "csrf_token" not in values
    assert set(values) == set(FIELDS)


def test_new_form_defaults_are_the_model_defaults() -> None:
    doc = iclient_doc(
        {**NEW_VALUES, "name": "n", "client_id": "c", "token_url": "https://t.example.com/t"},
        None,
    )
    defaults = IClientIn.model_validate(
        {
            "name": "n",
            "client_id": "c",
            "authorization_url": "https://a.example.com/a",
            "token_url": "https://t.example.com/t",
            "valid_domains": ["x.example.com"],
        }
    )
    for name in (
        "grant_type",
        "pkce",
        "client_auth",
        "scope_delimiter",
        "token_location",
        "header_name",
        "header_scheme",
        "param_name",
    ):
        assert doc[name] == getattr(defaults, name), name


def test_domain_errors_sit_next_to_the_domains() -> None:
    answer = ApiAnswer(
        400,
        {
            "error": {
                "code": "invalid_request",
                "message": "invalid request: valid_domains.0, valid_domains.2, token_url",
                "details": [
                    {"field": "valid_domains.0", "message": "'a b' is not a host name"},
                    {"field": "valid_domains.2", "message": "'x/y' is not a host name"},
                    {"field": "token_url", "message": "must be an https:// URL"},
                    {"field": "body", "message": "odd"},
                ],
            }
        },
    )
    assert field_errors(answer) == {
        "valid_domains": "item 1: 'a b' is not a host name; item 3: 'x/y' is not a host name",
        "token_url": "must be an https:// URL",
        "body": "odd",
    }


def test_a_secret_typed_before_the_form_came_back_must_be_typed_again() -> None:
    assert _retype_missing({"retype": "client_secret", "client_secret": ""}) == {
        "client_secret": "type it again: a typed secret is not sent back to the page"
    }
    assert _retype_missing({"retype": "client_secret", "client_secret": "s"}) == {}
    assert _retype_missing({"client_secret": ""}) == {}
