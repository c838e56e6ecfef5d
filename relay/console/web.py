"""The console's plumbing: the sub-application under ``/console/``, its session and
CSRF middleware, page rendering, sign-in and sign-out.

Every page is rendered on the server (aiohttp-jinja2, autoescaped) from what the REST
API answers; a little plain JavaScript (static/console.js) only shows and hides form
sections and refreshes the agents' status dots. Every POST carries the session's
CSRF token (a hidden field, or the X-CSRF-Token header for script calls) and is
refused with 403 without it."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from relay.api.keys import CONFIG, REGISTRY, REQUEST_ID
from relay.console.client import ApiAnswer, ApiClient
from relay.console.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    FirstRun,
    Session,
    SessionCodec,
    csrf_ok,
)

log = structlog.get_logger("relay.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/console"
STATIC_PREFIX = PREFIX + "/static/"
HERE = Path(__file__).resolve().parent
SESSION = web.RequestKey("console_session", Session)
# A form's fields, read once by the CSRF check and again by the handler.
FORM = web.RequestKey("console_form", dict)


@dataclass
class Console:
    codec: SessionCodec
    api: ApiClient
    first_run: FirstRun = field(default_factory=FirstRun)


CONSOLE = web.AppKey("console", Console)

SECURITY_HEADERS = {
    # No inline script or style anywhere: everything comes from /console/static/.
    # (No form-action: Save & authorize ends in a redirect to the provider.)
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# Messages shown after a redirect, chosen by a fixed key (never text from the URL).
NOTICES = {
    "signed_out": "You are signed out.",
    "expired": "Your session ended or your API token is no longer valid: sign in again.",
    "agent_deleted": "The agent was deleted.",
    "iclient_saved": "The iClient was saved.",
    "iclient_deleted": "The iClient was deleted.",
    "connection_saved": "The connection was tested and saved.",
    "connection_saved_offline": "The connection was saved.",
    "connection_deleted": "The connection was deleted.",
    "authorized": "Authorized: the connection was tested with its new token.",
}


def console_of(request: web.Request) -> Console:
    return request.config_dict[CONSOLE]


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def token_of(request: web.Request) -> str:
    token = session_of(request).token
    assert token is not None  # pages that call the API are behind @signed_in
    return token


async def api(
    request: web.Request,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
) -> ApiAnswer:
    """Call the REST API as the signed-in user, under this request's id."""
    rid = request.get(REQUEST_ID)
    return await console_of(request).api.call(
        method, path, token_of(request), json_body=json_body, params=params, request_id=rid
    )


class ApiFailed(Exception):
    """An API call a page cannot do without failed: the middleware answers with
    ``api_failure`` (the sign-in page for a dead token, an error page otherwise)."""

    def __init__(self, answer: ApiAnswer) -> None:
        super().__init__(answer.status)
        self.answer = answer


async def fetch(request: web.Request, path: str) -> ApiAnswer:
    """GET ``path`` from the API; a successful answer, or ApiFailed."""
    answer = await api(request, "GET", path)
    if not answer.ok:
        raise ApiFailed(answer)
    return answer


async def form_of(request: web.Request) -> dict[str, str]:
    """The posted form as strings (a repeated field keeps its last value)."""
    if FORM not in request:
        data = await request.post()
        request[FORM] = {k: v for k, v in data.items() if isinstance(v, str)}
    form: dict[str, str] = request[FORM]
    return form


def url(path: str) -> str:
    return PREFIX + path


def redirect(path: str, notice: str | None = None) -> web.HTTPFound:
    target = url(path)
    if notice is not None:
        target += ("&" if "?" in target else "?") + f"notice={notice}"
    return web.HTTPFound(target)


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    session = request.get(SESSION)
    notice = NOTICES.get(request.query.get("notice", ""))
    base: dict[str, Any] = {
        "errors": {},
        "message": None,
        "values": {},
        "session": session,
        "csrf_token": session.csrf if session is not None else "",
        "csrf_field": CSRF_FIELD,
        "notice": notice,
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return render(request, "error.html", {"title": title, "message": message}, status=status)


def api_failure(request: web.Request, answer: ApiAnswer) -> web.Response:
    """A page for an API error that has no form field to sit next to. A token that
    stopped working ends the session."""
    if answer.status == 401:
        request[SESSION] = Session.fresh()  # the dead token leaves the cookie
        raise redirect("/sign-in", "expired")
    error = answer.error
    titles = {404: "Not found", 409: "Not possible", 503: "Unavailable"}
    title = titles.get(answer.status, "Something went wrong")
    return error_page(request, answer.status, title, str(error.get("message", "")))


def signed_in(handler: Handler) -> Handler:
    """Pages for signed-in users; others go to the sign-in page and come back."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        if not session_of(request).signed_in:
            back = request.path_qs if request.method == "GET" else url("/")
            raise web.HTTPFound(url("/sign-in") + "?next=" + quote(back, safe=""))
        return await handler(request)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: only a console path (never another site)."""
    if raw and raw.startswith(PREFIX + "/") and not raw.startswith("//"):
        parts = urlsplit(raw)
        if not parts.scheme and not parts.netloc and "\\" not in raw:
            return raw
    return url("/connections")


# -- middleware -------------------------------------------------------------------


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(STATIC_PREFIX):
        # Versioned URLs (see _static_urls): cached for good, no session involved.
        asset = await handler(request)
        asset.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        asset.headers["X-Content-Type-Options"] = "nosniff"
        return asset
    console = console_of(request)
    loaded = console.codec.load(request)
    session = loaded or Session.fresh()
    request[SESSION] = session
    try:
        if request.method not in ("GET", "HEAD"):
            presented = request.headers.get(CSRF_HEADER)
            if presented is None:
                with contextlib.suppress(ValueError):
                    presented = (await form_of(request)).get(CSRF_FIELD)
            if loaded is None or not csrf_ok(loaded, presented):
                log.warning("console_csrf_rejected", path=request.path)
                response: web.StreamResponse = error_page(
                    request,
                    403,
                    "Request refused",
                    "This form expired or did not come from this console (CSRF check "
                    "failed). Reload the page and try again.",
                )
            else:
                response = await handler(request)
        else:
            response = await handler(request)
    except ApiFailed as failed:
        try:
            response = api_failure(request, failed.answer)
        except web.HTTPException as to_sign_in:
            response = to_sign_in
    except web.HTTPException as exc:
        if exc.status < 400:
            response = exc
        elif exc.status == 404:
            response = error_page(request, 404, "Not found", "There is no such page.")
        elif exc.status == 405:
            response = error_page(request, 405, "Not allowed", "That method is not allowed here.")
        else:
            response = error_page(request, exc.status, "Request refused", exc.reason)
    except Exception:
        log.exception("console_internal_error", path=request.path)
        rid = request.get(REQUEST_ID)
        response = error_page(
            request, 500, "Something went wrong", f"Internal error (request id {rid})."
        )
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    session = request[SESSION]
    if session is not loaded:  # a new visitor, or signed in or out just now
        console.codec.save(response, session)
    if isinstance(response, web.HTTPException):
        raise response
    return response


# -- sign in, sign out -------------------------------------------------------------


async def sign_in_page(request: web.Request) -> web.Response:
    if session_of(request).signed_in:
        raise web.HTTPFound(safe_next(request.query.get("next")))
    return render(
        request, "sign_in.html", {"next": safe_next(request.query.get("next")), "errors": {}}
    )


async def sign_in(request: web.Request) -> web.Response:
    form = await form_of(request)
    token = form.get("token", "").strip()
    next_url = safe_next(form.get("next"))
    account = None
    if token and len(token) <= 512:
        account = await request.config_dict[REGISTRY].authenticate_api_token(token)
    if account is None:
        log.info("console_sign_in_failed")
        return render(
            request,
            "sign_in.html",
            {"next": next_url, "errors": {"token": "This API token is not valid."}},
            status=401,
        )
    request[SESSION] = Session.signed_in_as(token, account.name)
    log.info("console_signed_in", account_id=account.id)
    raise web.HTTPFound(next_url)


async def sign_out(request: web.Request) -> web.Response:
    # A fresh anonymous session replaces the cookie: the token is gone from it.
    request[SESSION] = Session.fresh()
    raise redirect("/sign-in", "signed_out")


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound(url("/connections"))


async def to_console(request: web.Request) -> web.Response:
    raise web.HTTPFound(url("/"))


# -- application --------------------------------------------------------------------


def _static_urls() -> Callable[[str], str]:
    """``static("console.css")`` -> its URL with a content hash: browsers may cache it
    for good, and a new release is fetched anew."""
    versions = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in (HERE / "static").iterdir()
        if p.is_file()
    }

    def static(name: str) -> str:
        return f"{STATIC_PREFIX}{name}?v={versions[name]}"

    return static


def setup_console(app: web.Application, session_key: bytes) -> Console:
    """Mount the console at ``/console/``. ``session_key``: the Fernet key of the
    session cookie. The returned console's ``api`` needs its ``base_url`` once HTTP
    listens; ``first_run.start()`` opens the first-run setup page."""
    from relay.console import agents, connections, iclients, setup

    config = app[CONFIG]
    secure = urlsplit(config.http.public_url).scheme == "https"
    client = ApiClient()
    sub = web.Application(middlewares=[console_middleware])
    console = Console(codec=SessionCodec(session_key, secure=secure), api=client)
    sub[CONSOLE] = console
    env = aiohttp_jinja2.setup(
        sub,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.globals["static"] = _static_urls()
    sub.router.add_get("/", home)
    sub.router.add_get("/sign-in", sign_in_page)
    sub.router.add_post("/sign-in", sign_in)
    sub.router.add_post("/sign-out", sign_out)
    sub.router.add_static("/static/", HERE / "static")
    agents.setup_routes(sub)
    iclients.setup_routes(sub)
    connections.setup_routes(sub)
    setup.setup_routes(sub)

    async def close_client(_: web.Application) -> None:
        await client.close()

    sub.on_cleanup.append(close_client)
    app.router.add_get(PREFIX, to_console)
    app.add_subapp(PREFIX + "/", sub)
    return console
