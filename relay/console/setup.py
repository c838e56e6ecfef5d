"""First run: a relay with no account yet offers ``/console/setup/<code>``, where the
operator names the first account and is signed in with its API token, so nobody needs
the command line beyond starting the relay.

The one-time code is made at start-up, kept in memory only and written once to the
relay's log as a link (the only secret the relay ever logs, on purpose: it is what
the person starting the relay reads). It works only while the relay has no account
and only once; with any account the page says the relay is set up and sends people
to sign in."""

from __future__ import annotations

import structlog
from aiohttp import web

from relay.api.keys import REGISTRY
from relay.console.session import Session
from relay.console.web import SESSION, console_of, form_of, render
from relay.errors import ConflictError

log = structlog.get_logger("relay.console")

SETUP_ACTOR = "console:setup"


async def _usable(request: web.Request) -> bool:
    first_run = console_of(request).first_run
    if not first_run.matches(request.match_info["code"]):
        return False
    if await request.config_dict[REGISTRY].list_accounts():
        first_run.code = None  # set up meanwhile (another relay process, or the CLI)
        return False
    return True


def _gone(request: web.Request) -> web.Response:
    return render(request, "setup_done.html", {}, status=404)


async def setup_page(request: web.Request) -> web.Response:
    if not await _usable(request):
        return _gone(request)
    return render(request, "setup.html", {"code": request.match_info["code"]})


async def create_first_account(request: web.Request) -> web.Response:
    first_run = console_of(request).first_run
    form = await form_of(request)
    name = form.get("name", "").strip()
    async with first_run.lock:
        if not await _usable(request):
            return _gone(request)
        try:
            account, token = await request.config_dict[REGISTRY].create_account(
                name, actor=SETUP_ACTOR, only_first=True
            )
        except ConflictError:
            first_run.code = None  # another relay process (or the CLI) was first
            return _gone(request)
        except ValueError as exc:
            return render(
                request,
                "setup.html",
                {
                    "code": request.match_info["code"],
                    "values": {"name": name},
                    "errors": {"name": str(exc)},
                },
                status=400,
            )
        first_run.code = None
    log.info("console_first_account_created", account_id=account.id)
    request[SESSION] = Session.signed_in_as(token, account.name)
    return render(request, "setup_token.html", {"account": account, "api_token": token})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/setup/{code}", setup_page)
    app.router.add_post("/setup/{code}", create_first_account)
