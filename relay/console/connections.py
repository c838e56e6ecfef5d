"""Connections in the console: the list with each one's state, and the create/edit
form in the sections integration builders know from integrator.io (General,
Application details, Configure authentication, Non-standard API rate limiter, How to
test this connection?, Advanced) with Save & continue (test, then save), Test
connection (result shown on the form), Save & authorize (authorization code: to the
provider's consent and back to the connection) and Close.

The form's field names are the API document's dotted paths (``http.base_uri``), so
an API validation error lands next to the field it names."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from relay.api.keys import CONFIG
from relay.console.client import ApiAnswer
from relay.console.web import api, api_failure, fetch, form_of, redirect, render, signed_in
from relay.models.connection import MASK
from relay.registry.connections import get_path

_CONNECTION_ID = re.compile(r"^con_[a-z0-9]+$")
_ERROR_CODE = re.compile(r"^[a-z_]{1,60}$")

SECRETS = (
    "http.auth.basic.password",
    "http.auth.token.token",
    "http.client_certificate.key_pem",
)
# Comma-separated lists in the form, JSON arrays in the API.
LISTS = (
    "http.auth.fail_values",
    "http.rate_limit.fail_values",
    "http.ping.success_values",
    "http.ping.fail_values",
)
INTEGERS = (
    "http.auth.fail_status_code",
    "http.rate_limit.fail_status_code",
    "http.rate_limit.wait_between_requests_ms",
    "http.concurrency_level",
)
AUTH_TYPES = ("none", "basic", "token", "oauth2")

# The fields the form shows: an error for any other path is listed at the top.
FIELDS = frozenset(
    {
        "name",
        "mode",
        "agent_id",
        "http.base_uri",
        "http.media_type",
        "http.headers",
        "http.auth.type",
        "http.auth.basic.username",
        "http.auth.basic.password",
        "http.auth.token.token",
        "http.auth.token.location",
        "http.auth.token.header_name",
        "http.auth.token.scheme",
        "http.auth.token.param_name",
        "http.auth.oauth2.iclient_id",
        "http.auth.oauth2.scope",
        "http.auth.oauth2.scope_delimiter",
        "http.auth.oauth2.access_token_headers",
        "http.auth.fail_status_code",
        "http.auth.fail_path",
        "http.auth.fail_values",
        "http.rate_limit.fail_status_code",
        "http.rate_limit.fail_path",
        "http.rate_limit.fail_values",
        "http.rate_limit.retry_after_header",
        "http.rate_limit.wait_between_requests_ms",
        "http.ping.method",
        "http.ping.relative_uri",
        "http.ping.body",
        "http.ping.success_path",
        "http.ping.success_values",
        "http.ping.fail_path",
        "http.ping.fail_values",
        "http.ping.error_path",
        "http.concurrency_level",
        "http.borrow_concurrency_from",
        "http.disable_strict_ssl",
        "http.ca_pem",
        "http.client_certificate.cert_pem",
        "http.client_certificate.key_pem",
        "http.timeout_s",
    }
)

# The token fields' defaults (the API's), shown until Token auth is chosen.
TOKEN_DEFAULTS = {
    "http.auth.token.location": "header",
    "http.auth.token.header_name": "Authorization",
    "http.auth.token.scheme": "Bearer",
    "http.auth.token.param_name": "access_token",
}

# Sections shown collapsed unless something in them is set or wrong.
COLLAPSED_SECTIONS = {
    "rate_limit": ("http.rate_limit.",),
    "advanced": (
        "http.concurrency_level",
        "http.borrow_concurrency_from",
        "http.timeout_s",
        "http.disable_strict_ssl",
        "http.ca_pem",
        "http.client_certificate.",
    ),
}

# What came back from the provider (the OAuth callback's ``result``), in words.
AUTHORIZE_RESULTS = {
    "online": ("ok", "Authorized: the connection was tested with its new token and is online."),
    "offline": ("error", "Authorized, but the connection test then failed"),
    "needs_authorization": ("error", "The provider's token was refused by the API"),
    "denied": ("error", "The authorization was refused at the provider"),
    "failed": ("error", "The authorization failed"),
}


# -- form <-> API document ------------------------------------------------------------


def _text(form: dict[str, str], name: str) -> str | None:
    value = form.get(name, "").strip()
    return value or None


def _number(form: dict[str, str], name: str, kind: type[int] | type[float]) -> Any:
    """A number, or the text as typed (the API then names the field), or None."""
    value = _text(form, name)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return value


def split_list(value: str | None) -> list[str]:
    """One value per line (a value may hold commas); blank lines dropped."""
    if not value:
        return []
    return [item.strip() for item in value.splitlines() if item.strip()]


def parse_headers(value: str | None, field: str, errors: dict[str, str]) -> list[dict[str, str]]:
    """One ``Name: value`` per line."""
    headers = []
    for number, line in enumerate((value or "").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        if not sep or not name.strip():
            errors[field] = f"line {number}: write each header as 'Name: value'"
            continue
        headers.append({"name": name.strip(), "value": rest.strip()})
    return headers


def format_headers(headers: list[dict[str, str]] | None) -> str:
    return "\n".join(f"{h['name']}: {h['value']}" for h in headers or [])


RETYPE = "retype"  # the form field naming secrets to type again (see form_values)


def _secret(
    form: dict[str, str], name: str, stored: dict[str, Any] | None, errors: dict[str, str]
) -> str | None:
    """A secret input: what was typed; left empty, the stored secret (as the mask the
    API reads as "keep it") when there is one. A secret typed before the page came
    back (secrets are never sent back to a page) must be typed again: keeping the
    stored one instead would save something else than the user typed."""
    typed = form.get(name, "")
    if typed:
        return typed
    if name in form.get(RETYPE, "").split():
        errors[name] = "type it again: a typed secret is not sent back to the page"
        return None
    if stored is not None and get(stored, name) == MASK:
        return MASK
    return None


def get(doc: dict[str, Any] | None, path: str) -> Any:
    """The value at a form field's dotted path in an API document, or None."""
    return get_path(doc, tuple(path.split(".")))


def connection_doc(
    form: dict[str, str], stored: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The API document for a submitted form, and the errors found before any API call
    (malformed headers, a ping body that is not JSON). ``stored``: the connection as
    the API shows it, when editing (for the secrets kept)."""
    # Browsers send textarea lines as CRLF: store what the user sees, LF.
    form = {k: v.replace("\r\n", "\n") for k, v in form.items()}
    errors: dict[str, str] = {}
    mode = form.get("mode", "cloud")
    auth_type = form.get("http.auth.type", "none")
    media_type = form.get("http.media_type", "json")

    auth: dict[str, Any] = {
        "type": auth_type,
        "basic": None,
        "token": None,
        "oauth2": None,
        # Detected with any auth type (a key in a plain header needs them too).
        "fail_status_code": _number(form, "http.auth.fail_status_code", int),
        "fail_path": _text(form, "http.auth.fail_path"),
        "fail_values": split_list(form.get("http.auth.fail_values")),
    }
    if auth_type == "basic":
        auth["basic"] = {
            "username": form.get("http.auth.basic.username", "").strip(),
            "password": _secret(form, "http.auth.basic.password", stored, errors),
        }
    elif auth_type == "token":
        auth["token"] = {
            "token": _secret(form, "http.auth.token.token", stored, errors),
            "location": form.get("http.auth.token.location", "header"),
            "header_name": _text(form, "http.auth.token.header_name") or "Authorization",
            "scheme": form.get("http.auth.token.scheme", "").strip(),  # empty: none
            "param_name": _text(form, "http.auth.token.param_name") or "access_token",
        }
    elif auth_type == "oauth2":
        auth["oauth2"] = {
            "iclient_id": form.get("http.auth.oauth2.iclient_id", ""),
            "scope": [s for s in re.split(r"[\s,]+", form.get("http.auth.oauth2.scope", "")) if s],
            "scope_delimiter": form.get("http.auth.oauth2.scope_delimiter") or None,
            "access_token_headers": parse_headers(
                form.get("http.auth.oauth2.access_token_headers"),
                "http.auth.oauth2.access_token_headers",
                errors,
            ),
        }

    ping_body: Any = form.get("http.ping.body", "")
    if not ping_body.strip():
        ping_body = None
    elif media_type == "json":
        try:
            ping_body = json.loads(ping_body)
        except json.JSONDecodeError as exc:
            errors["http.ping.body"] = f"not valid JSON ({exc.msg}, line {exc.lineno})"

    cert_pem = _text(form, "http.client_certificate.cert_pem")
    client_certificate = None
    if cert_pem is not None:
        client_certificate = {
            "cert_pem": cert_pem,
            "key_pem": _secret(form, "http.client_certificate.key_pem", stored, errors),
        }

    if mode == "onpremise" and not form.get("agent_id"):
        # The API says so too, about the whole body; here it sits at the drop-down.
        errors["agent_id"] = "choose the agent that reaches this API"
    timeout = _number(form, "http.timeout_s", float)
    doc: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "type": "http",
        "mode": mode,
        "agent_id": (form.get("agent_id") or None) if mode == "onpremise" else None,
        "http": {
            "base_uri": form.get("http.base_uri", "").strip(),
            "media_type": media_type,
            "headers": parse_headers(form.get("http.headers"), "http.headers", errors),
            "auth": auth,
            "rate_limit": {
                "fail_status_code": _number(form, "http.rate_limit.fail_status_code", int),
                "fail_path": _text(form, "http.rate_limit.fail_path"),
                "fail_values": split_list(form.get("http.rate_limit.fail_values")),
                "retry_after_header": _text(form, "http.rate_limit.retry_after_header")
                or "Retry-After",
                "wait_between_requests_ms": _number(
                    form, "http.rate_limit.wait_between_requests_ms", int
                )
                or 0,
            },
            "ping": {
                "method": form.get("http.ping.method", "GET"),
                "relative_uri": form.get("http.ping.relative_uri", "").strip() or "/",
                "body": ping_body,
                "success_path": _text(form, "http.ping.success_path"),
                "success_values": split_list(form.get("http.ping.success_values")),
                "fail_path": _text(form, "http.ping.fail_path"),
                "fail_values": split_list(form.get("http.ping.fail_values")),
                "error_path": _text(form, "http.ping.error_path"),
            },
            "concurrency_level": _number(form, "http.concurrency_level", int),
            "borrow_concurrency_from": form.get("http.borrow_concurrency_from") or None,
            "disable_strict_ssl": form.get("http.disable_strict_ssl") == "on",
            "ca_pem": _text(form, "http.ca_pem"),
            "client_certificate": client_certificate,
            "timeout_s": 30.0 if timeout is None else timeout,
        },
    }
    return doc, errors


def connection_values(doc: dict[str, Any]) -> dict[str, str]:
    """Form values for a connection as the API shows it (secrets never: their inputs
    stay empty, with a placeholder saying one is stored)."""
    values: dict[str, str] = {}
    for name in FIELDS:
        if name in SECRETS:
            continue
        value = get(doc, name)
        if name in ("http.headers", "http.auth.oauth2.access_token_headers"):
            values[name] = format_headers(value)
        elif name in LISTS:
            values[name] = "\n".join(value or [])
        elif name == "http.auth.oauth2.scope":
            values[name] = " ".join(value or [])
        elif name == "http.disable_strict_ssl":
            values[name] = "on" if value else ""
        elif name == "http.ping.body":
            if value is None:
                values[name] = ""
            elif isinstance(value, str) and get(doc, "http.media_type") != "json":
                values[name] = value
            else:
                values[name] = json.dumps(value, indent=2)
        elif value is None:
            values[name] = ""
        else:
            values[name] = str(value)
    if get(doc, "http.auth.token") is None:
        # Token not chosen yet: its fields start with the API's defaults.
        values.update(TOKEN_DEFAULTS)
    return values


def _section_in_use(
    prefixes: tuple[str, ...],
    values: dict[str, str],
    errors: dict[str, str],
    secrets_stored: dict[str, bool],
) -> bool:
    """Whether a collapsed section should open: a value other than the default, an
    error, or a stored secret in it."""
    defaults = NEW_VALUES
    return (
        any(
            values.get(name, "") != defaults.get(name, "")
            for name in FIELDS
            if name.startswith(prefixes) and name not in SECRETS
        )
        or any(name.startswith(prefixes) for name in errors)
        or any(stored and name.startswith(prefixes) for name, stored in secrets_stored.items())
    )


def form_values(form: dict[str, str]) -> dict[str, str]:
    """What the user typed, to show again. Never the secrets: those typed are named in
    the ``retype`` field instead, to be typed again before the next save."""
    values = {k: v for k, v in form.items() if k in FIELDS and k not in SECRETS}
    retype = [n for n in SECRETS if form.get(n) or n in form.get(RETYPE, "").split()]
    values[RETYPE] = " ".join(retype)
    return values


# The form of a new connection: every default of the API document.
NEW_VALUES = {
    **connection_values(connection_doc({})[0]),
    "name": "",
    "http.base_uri": "",
    RETYPE: "",
}


# -- pages ------------------------------------------------------------------------------


def _connection_id(request: web.Request) -> str:
    connection_id = request.match_info["connection_id"]
    if not _CONNECTION_ID.match(connection_id):
        raise web.HTTPNotFound()
    return connection_id


async def _choices(request: web.Request, exclude: str | None = None) -> dict[str, Any]:
    """The agents (with their status), iClients and connections the form offers."""
    agents, iclients, connections = await asyncio.gather(
        fetch(request, "/v1/agents"),
        fetch(request, "/v1/iclients"),
        fetch(request, "/v1/connections"),
    )
    return {
        "agents": agents.body["agents"],
        "iclients": iclients.body["iclients"],
        "others": [c for c in connections.body["connections"] if c["id"] != exclude],
    }


async def _form_page(
    request: web.Request,
    *,
    values: dict[str, str],
    stored: dict[str, Any] | None,
    errors: dict[str, str] | None = None,
    message: str | None = None,
    test: dict[str, Any] | None = None,
    status: int = 200,
) -> web.Response:
    choices = await _choices(request, stored["id"] if stored else None)
    authorized = None
    result = request.query.get("result")
    if stored is not None and result in AUTHORIZE_RESULTS:
        kind, text = AUTHORIZE_RESULTS[result]
        code = request.query.get("error", "")
        if kind == "error" and _ERROR_CODE.match(code):
            text = f"{text} ({code}): {stored.get('state_reason') or ''}".rstrip(": ")
        authorized = {"kind": kind, "text": text}
    secrets_stored = {name: get(stored, name) == MASK for name in SECRETS}
    retype_help = {
        name: "Type it again before saving: a typed secret is not sent back to the page."
        for name in values.get(RETYPE, "").split()
        if name in SECRETS
    }
    shown_errors = errors or {}
    open_sections = {
        name: _section_in_use(prefixes, values, shown_errors, secrets_stored)
        for name, prefixes in COLLAPSED_SECTIONS.items()
    }
    return render(
        request,
        "connections/form.html",
        {
            "values": values,
            "errors": shown_errors,
            "message": message,
            "stored": stored,
            "open_sections": open_sections,
            "secrets_stored": secrets_stored,
            "retype_help": retype_help,
            "test": test,
            "authorized": authorized,
            "fields": FIELDS,
            **choices,
        },
        status=status,
    )


@signed_in
async def connections_page(request: web.Request) -> web.Response:
    answer = await fetch(request, "/v1/connections")
    agents = await fetch(request, "/v1/agents")
    names = {a["id"]: a for a in agents.body["agents"]}
    return render(
        request,
        "connections/list.html",
        {"connections": answer.body["connections"], "agents": names},
    )


@signed_in
async def new_connection_page(request: web.Request) -> web.Response:
    return await _form_page(request, values=dict(NEW_VALUES), stored=None)


@signed_in
async def edit_connection_page(request: web.Request) -> web.Response:
    connection_id = _connection_id(request)
    answer = await fetch(request, f"/v1/connections/{connection_id}")
    return await _form_page(request, values=connection_values(answer.body), stored=answer.body)


@signed_in
async def submit_new(request: web.Request) -> web.Response:
    return await _submit(request, None)


@signed_in
async def submit_edit(request: web.Request) -> web.Response:
    connection_id = _connection_id(request)
    answer = await fetch(request, f"/v1/connections/{connection_id}")
    return await _submit(request, answer.body)


async def _submit(request: web.Request, stored: dict[str, Any] | None) -> web.Response:
    """The form's three submit buttons: ``action`` = test, save or authorize."""
    form = await form_of(request)
    action = form.get("action", "save")
    values = form_values(form)
    doc, errors = connection_doc(form, stored)
    if action == "test" and request.headers.get(FRAGMENT_HEADER) == "test-result":
        return await _test_fragment(request, doc, errors, stored)
    if errors:
        return await _form_page(
            request,
            values=values,
            stored=stored,
            errors=errors,
            message="Correct the fields marked below.",
            status=400,
        )
    if action == "test":
        if stored is None:
            answer = await api(request, "POST", "/v1/connections/test", json_body=doc)
        else:
            answer = await api(
                request, "POST", f"/v1/connections/{stored['id']}/test", json_body=doc
            )
        if answer.ok:
            return await _form_page(request, values=values, stored=stored, test=answer.body)
        return await _refused(request, answer, values, stored)

    if stored is None:
        answer = await api(request, "POST", "/v1/connections", json_body=doc)
    else:
        answer = await api(request, "PATCH", f"/v1/connections/{stored['id']}", json_body=doc)
    if answer.status == 422 and isinstance(answer.body, dict) and "test" in answer.body:
        return await _form_page(
            request,
            values=values,
            stored=stored,
            test=answer.body["test"],
            message="Not saved: the connection test did not pass.",
            status=422,
        )
    if not answer.ok:
        return await _refused(request, answer, values, stored)
    saved = answer.body
    notice = "connection_saved" if saved["state"] == "online" else "connection_saved_offline"
    if action == "authorize" and saved["http"]["auth"]["type"] == "oauth2":
        return await _authorize(request, saved["id"], notice)
    raise redirect(f"/connections/{saved['id']}", notice)


FRAGMENT_HEADER = "X-Console-Fragment"


async def _test_fragment(
    request: web.Request,
    doc: dict[str, Any],
    errors: dict[str, str],
    stored: dict[str, Any] | None,
) -> web.Response:
    """Test connection from the page's script: only the result block, so the form
    (and the secrets typed in it) stays as it is."""
    answer = None
    if not errors:
        path = "/v1/connections/test" if stored is None else f"/v1/connections/{stored['id']}/test"
        answer = await api(request, "POST", path, json_body=doc)
        if answer.status == 401:
            return web.Response(status=401)  # the script reloads: to the sign-in page
        if not answer.ok:
            errors = answer.errors_on(FIELDS) or {
                "": str(answer.error.get("message", "the test could not run"))
            }
    response = render(
        request,
        "connections/test_result.html",
        {
            "test": answer.body if answer is not None and answer.ok else None,
            "errors": errors,
            "fragment": True,
        },
        status=200 if not errors else 400,
    )
    # The script puts only an answer marked so into the page (not a sign-in page or
    # an error page it was redirected to).
    response.headers[FRAGMENT_HEADER] = "test-result"
    return response


async def _refused(
    request: web.Request,
    answer: ApiAnswer,
    values: dict[str, str],
    stored: dict[str, Any] | None,
) -> web.Response:
    """The API said no: field errors next to their fields, anything else at the top."""
    if answer.status in (400, 409):
        return await _form_page(
            request,
            values=values,
            stored=stored,
            errors=answer.errors_on(FIELDS),
            message=str(answer.error.get("message", "")),
            status=answer.status,
        )
    return api_failure(request, answer)


async def _authorize(request: web.Request, connection_id: str, notice: str) -> web.Response:
    """Save & authorize, second half: to the provider's consent page, and back to this
    connection's page afterwards (the OAuth callback appends the outcome). An iClient
    with the client_credentials grant has nothing to authorize: back to the page."""
    public_url = request.config_dict[CONFIG].http.public_url.rstrip("/")
    back = f"{public_url}/console/connections/{connection_id}"
    answer = await api(
        request,
        "GET",
        f"/v1/connections/{connection_id}/authorize",
        params={"return_url": back},
    )
    # The API answers JSON to a client that asks for it (the console does).
    if answer.ok and isinstance(answer.body, dict) and answer.body.get("authorization_url"):
        raise web.HTTPFound(
            answer.body["authorization_url"], headers={"Referrer-Policy": "no-referrer"}
        )
    if answer.status == 409:
        raise redirect(f"/connections/{connection_id}", notice)
    return api_failure(request, answer)


@signed_in
async def confirm_delete(request: web.Request) -> web.Response:
    connection_id = _connection_id(request)
    answer = await fetch(request, f"/v1/connections/{connection_id}")
    return render(request, "connections/confirm.html", {"connection": answer.body})


@signed_in
async def delete(request: web.Request) -> web.Response:
    connection_id = _connection_id(request)
    answer = await api(request, "DELETE", f"/v1/connections/{connection_id}")
    if answer.status == 409:
        shown = await fetch(request, f"/v1/connections/{connection_id}")
        return render(
            request,
            "connections/confirm.html",
            {"connection": shown.body, "refused": answer.error.get("message", "")},
            status=409,
        )
    if not answer.ok:
        return api_failure(request, answer)
    raise redirect("/connections", "connection_deleted")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/connections", connections_page)
    app.router.add_get("/connections/new", new_connection_page)
    app.router.add_post("/connections", submit_new)
    app.router.add_get("/connections/{connection_id}", edit_connection_page)
    app.router.add_post("/connections/{connection_id}", submit_edit)
    app.router.add_get("/connections/{connection_id}/delete", confirm_delete)
    app.router.add_post("/connections/{connection_id}/delete", delete)
