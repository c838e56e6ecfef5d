"""iClients (OAuth 2.0 clients) in the console: the list, Create iClient, Edit iClient
and Delete (confirmed; refused while connections use it).

The form's field names are the API's JSON field names, so the API's field errors sit
next to their fields as they are. ``iclient_doc`` and ``iclient_values`` convert
between the posted form and the API's JSON document; they are pure functions. The
client secret is write-only: it is never put back into a form."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from relay.console.client import ApiAnswer
from relay.console.web import api, api_failure, fetch, form_of, redirect, render, signed_in
from relay.models.connection import MASK  # shown for a stored secret; sent back: keep it

_ICLIENT_ID = re.compile(r"^icl_[a-z0-9]+$")


GRANT_TYPES = [
    ("authorization_code", "Authorization code"),
    ("client_credentials", "Client credentials"),
]
CLIENT_AUTHS = [("body", "HTTP body"), ("basic", "Basic auth header")]
TOKEN_LOCATIONS = [("header", "HTTP header"), ("url", "URL parameter"), ("body", "HTTP body")]

# Every field of the form, named as in the API's JSON document.
FIELDS = (
    "name",
    "grant_type",
    "client_id",
    "client_secret",
    "authorization_url",
    "token_url",
    "revoke_url",
    "pkce",
    "client_auth",
    "scope_delimiter",
    "token_location",
    "header_name",
    "header_scheme",
    "param_name",
    "valid_domains",
)
# Text fields whose empty value means "not set" (null in the document).
_OPTIONAL = ("client_secret", "authorization_url", "revoke_url")
# Text fields the API requires: sent as typed (stripped), so an empty one gets the
# API's own "at least 1 character" error next to it.
_REQUIRED = ("name", "client_id", "token_url")
# Fields that matter only with one setting; when irrelevant and empty they keep the
# stored value (or the default), so a field hidden by the page's script never blocks
# a save.
_DEFAULT_HEADER_NAME = "Authorization"
_DEFAULT_PARAM_NAME = "access_token"
DEFAULT_DELIMITER = " "

# The form of a new iClient.
NEW_VALUES: dict[str, str] = {
    "grant_type": "authorization_code",
    "pkce": "on",
    "client_auth": "body",
    "scope_delimiter": "",
    "token_location": "header",
    "header_name": _DEFAULT_HEADER_NAME,
    "header_scheme": "Bearer",
    "param_name": _DEFAULT_PARAM_NAME,
}

_DOMAIN_SEPARATORS = re.compile(r"[,\r\n]+")


def split_domains(raw: str) -> list[str]:
    """``"a.example.com, b.example.com\\n*.example.org"`` -> the three names, stripped;
    empty entries dropped (the API checks each name)."""
    return [d.strip() for d in _DOMAIN_SEPARATORS.split(raw) if d.strip()]


def _choice(form: dict[str, str], name: str, options: list[tuple[str, str]]) -> str:
    """A select's value; anything else is sent as is, so the API names it."""
    return form.get(name, options[0][0]).strip()


def iclient_doc(form: dict[str, str], stored: dict[str, Any] | None) -> dict[str, Any]:
    """The posted form as the API's JSON document (POST, or the whole document for a
    PATCH). ``stored``: the iClient as the API shows it (secret masked) when editing.

    Empty optional text -> null; the PKCE checkbox "on" -> true, absent -> false;
    valid domains split on newlines and commas; an empty scope delimiter -> a space.
    An empty client secret keeps the stored one (``"********"``) if there is one,
    else null. The header scheme is sent as ``""`` when empty: the API stores that as
    "no scheme", where a null in a PATCH (a merge patch) would bring back the default
    "Bearer"."""
    stored = stored or {}
    doc: dict[str, Any] = {}
    for name in _REQUIRED:
        doc[name] = form.get(name, "").strip()
    for name in _OPTIONAL:
        value = form.get(name, "").strip()
        doc[name] = value or None
    grant_type = _choice(form, "grant_type", GRANT_TYPES)
    doc["grant_type"] = grant_type
    if doc["client_secret"] is None and stored.get("client_secret") is not None:
        doc["client_secret"] = MASK
    if grant_type == "client_credentials":
        # No user authorizes a client-credentials client: the authorization URL is
        # irrelevant (and hidden by the page's script), so whatever it holds is ignored.
        doc["authorization_url"] = None
    doc["pkce"] = form.get("pkce") == "on"
    doc["client_auth"] = _choice(form, "client_auth", CLIENT_AUTHS)
    delimiter = form.get("scope_delimiter", "")
    doc["scope_delimiter"] = delimiter if delimiter else DEFAULT_DELIMITER
    location = _choice(form, "token_location", TOKEN_LOCATIONS)
    doc["token_location"] = location
    header_name = form.get("header_name", "").strip()
    if not header_name:  # the help says: default Authorization
        header_name = str(stored.get("header_name") or _DEFAULT_HEADER_NAME)
    doc["header_name"] = header_name
    doc["header_scheme"] = form.get("header_scheme", "").strip()
    param_name = form.get("param_name", "").strip()
    if not param_name:  # the help says: default access_token
        param_name = str(stored.get("param_name") or _DEFAULT_PARAM_NAME)
    doc["param_name"] = param_name
    doc["valid_domains"] = split_domains(form.get("valid_domains", ""))
    return doc


def iclient_values(doc: dict[str, Any]) -> dict[str, str]:
    """The API's document as form values. Never the secret: its value is always ""
    (the form says whether one is stored). A delimiter of one space shows empty (the
    field's help says empty means a space)."""
    values: dict[str, str] = {}
    for name in FIELDS:
        value = doc.get(name)
        values[name] = "" if value is None else str(value)
    values["client_secret"] = ""
    values["pkce"] = "on" if doc.get("pkce") else ""
    if doc.get("scope_delimiter") in (None, DEFAULT_DELIMITER):
        values["scope_delimiter"] = ""
    values["valid_domains"] = "\n".join(str(d) for d in doc.get("valid_domains") or [])
    return values


def posted_values(form: dict[str, str]) -> dict[str, str]:
    """What the user posted, to show the form again: every field, the secret left out."""
    values = {name: form.get(name, "") for name in FIELDS}
    values["client_secret"] = ""
    values["pkce"] = "on" if form.get("pkce") == "on" else ""
    return values


def field_errors(answer: ApiAnswer) -> dict[str, str]:
    """The API's field errors by form field: an error on one of the valid domains
    (``valid_domains.2``) sits next to the domains' textarea."""
    return answer.errors_on(FIELDS)


def _iclient_id(request: web.Request) -> str:
    iclient_id = request.match_info["iclient_id"]
    if not _ICLIENT_ID.match(iclient_id):
        raise web.HTTPNotFound()
    return iclient_id


def _form_page(
    request: web.Request,
    *,
    iclient: dict[str, Any] | None,
    values: dict[str, str],
    errors: dict[str, str] | None = None,
    message: str | None = None,
    retype_secret: bool = False,
    status: int = 200,
) -> web.Response:
    """The create (``iclient`` None) or edit form. ``retype_secret``: a secret was
    typed but the form comes back (it is never sent back to the browser)."""
    return render(
        request,
        "iclients/form.html",
        {
            "iclient": iclient,
            "values": values,
            "errors": errors or {},
            "message": message,
            "fields": list(FIELDS),
            "secret_stored": bool(iclient and iclient.get("client_secret") is not None),
            "retype_secret": retype_secret,
            "grant_types": GRANT_TYPES,
            "client_auths": CLIENT_AUTHS,
            "token_locations": TOKEN_LOCATIONS,
        },
        status=status,
    )


@signed_in
async def iclients_page(request: web.Request) -> web.Response:
    answer = await fetch(request, "/v1/iclients")
    return render(
        request,
        "iclients/list.html",
        {"iclients": answer.body["iclients"], "grant_types": dict(GRANT_TYPES)},
    )


@signed_in
async def new_iclient_page(request: web.Request) -> web.Response:
    return _form_page(request, iclient=None, values=dict(NEW_VALUES))


def _retype_missing(form: dict[str, str]) -> dict[str, str]:
    """A secret typed before the form came back must be typed again: saving the stored
    one (or none) instead would not be what the user typed."""
    if form.get("retype") == "client_secret" and not form.get("client_secret"):
        return {"client_secret": "type it again: a typed secret is not sent back to the page"}
    return {}


@signed_in
async def create_iclient(request: web.Request) -> web.Response:
    return await _save(request, None)


@signed_in
async def edit_iclient_page(request: web.Request) -> web.Response:
    iclient_id = _iclient_id(request)
    answer = await fetch(request, f"/v1/iclients/{iclient_id}")
    return _form_page(request, iclient=answer.body, values=iclient_values(answer.body))


@signed_in
async def save_iclient(request: web.Request) -> web.Response:
    shown = await fetch(request, f"/v1/iclients/{_iclient_id(request)}")
    return await _save(request, shown.body)


async def _save(request: web.Request, iclient: dict[str, Any] | None) -> web.Response:
    """Create (``iclient`` None) or change an iClient; the form again, with the errors
    next to their fields, when the API says no (409 on a change: someone else saved
    it meanwhile; the form stays, to save again)."""
    form = await form_of(request)
    missing = _retype_missing(form)
    if missing:
        return _form_page(
            request,
            iclient=iclient,
            values=posted_values(form),
            errors=missing,
            retype_secret=True,
            status=400,
        )
    doc = iclient_doc(form, iclient)
    if iclient is None:
        answer = await api(request, "POST", "/v1/iclients", json_body=doc)
    else:
        answer = await api(request, "PATCH", f"/v1/iclients/{iclient['id']}", json_body=doc)
    if answer.status in (400, 409):
        return _form_page(
            request,
            iclient=iclient,
            values=posted_values(form),
            errors=field_errors(answer) if answer.status == 400 else {},
            message=str(answer.error.get("message", "")),
            retype_secret=bool(form.get("client_secret", "").strip()),
            status=answer.status,
        )
    if not answer.ok:
        return api_failure(request, answer)
    raise redirect("/iclients", "iclient_saved")


@signed_in
async def confirm_delete_page(request: web.Request) -> web.Response:
    iclient_id = _iclient_id(request)
    answer = await fetch(request, f"/v1/iclients/{iclient_id}")
    return render(request, "iclients/confirm.html", {"iclient": answer.body, "in_use": []})


@signed_in
async def delete_iclient(request: web.Request) -> web.Response:
    iclient_id = _iclient_id(request)
    answer = await api(request, "DELETE", f"/v1/iclients/{iclient_id}")
    if answer.status == 409:
        shown = await fetch(request, f"/v1/iclients/{iclient_id}")
        return render(
            request,
            "iclients/confirm.html",
            {"iclient": shown.body, "in_use": answer.connections_in_use()},
            status=409,
        )
    if not answer.ok:
        return api_failure(request, answer)
    raise redirect("/iclients", "iclient_deleted")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/iclients", iclients_page)
    app.router.add_get("/iclients/new", new_iclient_page)
    app.router.add_post("/iclients", create_iclient)
    app.router.add_get("/iclients/{iclient_id}", edit_iclient_page)
    app.router.add_post("/iclients/{iclient_id}", save_iclient)
    app.router.add_get("/iclients/{iclient_id}/delete", confirm_delete_page)
    app.router.add_post("/iclients/{iclient_id}/delete", delete_iclient)
