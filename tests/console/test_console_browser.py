"""The console in a real browser (Debian's Chromium through pytest-playwright), against
a real relay process: sign-in, agents (the token shown once, the agent started with
it goes online on the live list), on-premise connections built in the form (Test
connection, success and failure, inline; Save & continue; errors next to fields),
CSRF refusal, and the whole Save & authorize round trip at oidc-provider-mock."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from console_harness import ConsoleRelay, assert_labelled, run_agent, sign_in
from playwright.sync_api import Page, expect

with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from oidc_provider_mock import run_server_in_thread

ONLINE = re.compile(r"\bOnline\b")


def create_agent(page: Page, relay: ConsoleRelay, name: str) -> tuple[str, str]:
    """Create agent in the console; the token and agent.yaml it shows once."""
    page.goto(relay.url + "/console/agents")
    page.get_by_role("link", name="Create agent").click()
    assert_labelled(page)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Description").fill("ERP network, rack 3")
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("heading", name=f"Agent created: {name}")).to_be_visible()
    token = page.locator("#agent-token").input_value()
    agent_yaml = page.locator("#agent-yaml").input_value()
    assert token.startswith("oat_")
    assert "host_key:" in agent_yaml
    assert_labelled(page)
    return token, agent_yaml


@pytest.fixture
def agent_online(page: Page, relay: ConsoleRelay, service: int, tmp_path: Path) -> Iterator[str]:
    """An agent created in the console, started with what the console showed, seen
    online on the agents list (the status dot changes without a reload)."""
    sign_in(page, relay)
    token, agent_yaml = create_agent(page, relay, "erp-agent")
    page.get_by_role("link", name="Done").click()
    row = page.locator("tr", has_text="erp-agent")
    expect(row.locator('[data-col="status"]')).to_have_text("Offline")
    with run_agent(tmp_path / "agent", agent_yaml, token, [f"127.0.0.1:{service}"]):
        expect(row.locator('[data-col="status"]')).to_have_text(ONLINE)
        expect(row.locator('[data-col="sessions"]')).not_to_have_text("0")
        yield "erp-agent"


def test_sign_in_keeps_the_token_out_of_the_page(page: Page, relay: ConsoleRelay) -> None:
    page.goto(relay.url + "/console/agents")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    page.get_by_label("API token").fill("oak_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#f-token-error")).to_have_text("This API token is not valid.")
    expect(page.get_by_label("API token")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("API token").fill(relay.api_token)
    page.get_by_role("button", name="Sign in").click()
    # Back where the user was going.
    expect(page.get_by_role("heading", name="Agents", exact=True)).to_be_visible()
    assert relay.api_token not in page.content()
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["onprem_console"]
    cookie = cookies[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
    assert relay.api_token not in cookie["value"]  # encrypted
    assert page.evaluate("document.cookie") == ""  # no script can read it

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(relay.url + "/console/connections")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))


def test_keyboard_only(page: Page, relay: ConsoleRelay) -> None:
    """Sign in and fill the connection form without a mouse."""
    page.goto(relay.url + "/console/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(relay.api_token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Connections", exact=True)).to_be_visible()

    page.get_by_role("link", name="Create connection").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create connection")).to_be_visible()
    page.get_by_label("Name", exact=True).focus()
    page.keyboard.type("Keyboard")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Cloud")).to_be_focused()
    page.keyboard.press("ArrowRight")  # the radio group: On-premise
    expect(page.get_by_label("On-premise")).to_be_checked()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Agent")).to_be_focused()  # shown for On-premise
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="create one")).to_be_focused()  # no agents yet
    page.keyboard.press("Tab")
    expect(page.get_by_label("Base URI")).to_be_focused()
    page.keyboard.type("erp.internal")
    page.keyboard.press("Enter")  # the form's first button: Save & continue
    # Each error next to its field; focus on the first one.
    expect(page.locator("#f-agent_id-error")).to_have_text("choose the agent that reaches this API")
    expect(page.get_by_label("Agent")).to_be_focused()
    assert relay.api("GET", "/v1/connections")[1] == {"connections": []}


def test_agent_token_once_then_online_rotate_and_delete(
    page: Page, relay: ConsoleRelay, agent_online: str
) -> None:
    row = page.locator("tr", has_text=agent_online)
    expect(row.locator('[data-col="version"]')).not_to_have_text("—")

    # Rotate: confirmed first; the new token is shown once and the session dropped.
    row.get_by_role("link", name=re.compile("Rotate token")).click()
    expect(page.get_by_role("heading", name=re.compile("Rotate the access token"))).to_be_visible()
    page.get_by_role("button", name="Rotate token").click()
    expect(page.get_by_role("heading", name=f"New access token: {agent_online}")).to_be_visible()
    new_token = page.locator("#agent-token").input_value()
    assert new_token.startswith("oat_")
    page.get_by_role("link", name="Done").click()
    expect(row.locator('[data-col="status"]')).to_have_text("Offline")

    # Delete: confirmed first.
    row.get_by_role("link", name=re.compile("Delete")).click()
    page.get_by_role("button", name="Delete agent").click()
    expect(page.get_by_text("The agent was deleted.")).to_be_visible()
    assert relay.api("GET", "/v1/agents")[1] == {"agents": []}


def fill_onprem_connection(page: Page, service: int, agent: str) -> None:
    page.get_by_label("Name", exact=True).fill("ERP orders")
    expect(page.get_by_label("Agent")).to_be_hidden()  # Cloud is the default mode
    page.get_by_label("On-premise").check()
    agent_select = page.get_by_label("Agent")
    expect(agent_select).to_be_visible()
    expect(agent_select.locator("option", has_text=f"{agent} (online)")).to_have_count(1)
    agent_select.select_option(label=f"{agent} (online)")
    page.get_by_label("Base URI").fill(f"http://127.0.0.1:{service}")
    page.get_by_label("Authentication type").select_option("basic")
    page.get_by_label("Username").fill("svc")
    page.get_by_label("Password").fill("erp-pw-7f3a")
    page.get_by_label("Relative URI").fill("/health")
    page.get_by_label("Path to success field in HTTP response body").fill("status")
    page.get_by_label("Success values").fill("ok")


def test_onprem_connection_test_save_and_errors(
    page: Page, relay: ConsoleRelay, service: int, agent_online: str
) -> None:
    page.goto(relay.url + "/console/connections")
    page.get_by_role("link", name="Create connection").click()
    sections = page.locator("fieldset > legend").all_text_contents()
    assert sections == [
        "General",
        "Application details",
        "Configure authentication",
        "Non-standard API rate limiter",
        "How to test this connection?",
        "Advanced",
    ]
    assert_labelled(page)
    # The rarely used sections start collapsed; a click (or Enter) opens them.
    expect(page.get_by_label("Concurrency level")).to_be_hidden()
    page.locator("summary", has_text="Advanced").click()
    expect(page.get_by_label("Concurrency level")).to_be_visible()
    fill_onprem_connection(page, service, agent_online)

    # Test connection: success, shown on the form, nothing saved.
    page.get_by_role("button", name="Test connection").click()
    result = page.locator("#test-result")
    expect(result).to_contain_text("Connection test passed.")
    expect(result).to_contain_text("On-premise route, HTTP 200")
    assert relay.api("GET", "/v1/connections")[1] == {"connections": []}

    # Failure: the API answers 500 on /broken; the message says why, inline.
    page.get_by_label("Relative URI").fill("/broken")
    page.get_by_role("button", name="Test connection").click()
    expect(result).to_contain_text("Connection test failed")
    expect(result).to_contain_text("HTTP 500")
    # A port the agent is not allowed to reach: refused by the agent's allowlist.
    page.get_by_label("Base URI").fill("http://127.0.0.1:1")
    page.get_by_label("Relative URI").fill("/health")
    page.get_by_role("button", name="Test connection").click()
    expect(result).to_contain_text("Connection test failed (target_not_allowed")

    # Save & continue tests first: a failing test saves nothing.
    page.get_by_role("button", name="Save & continue").click()
    expect(page.get_by_text("Not saved: the connection test did not pass.")).to_be_visible()
    assert relay.api("GET", "/v1/connections")[1] == {"connections": []}
    # The page came back without the password (secrets never go back to a page).
    expect(page.locator("#f-http-auth-basic-password-help")).to_contain_text("Type it again")
    page.get_by_label("Password").fill("erp-pw-7f3a")

    # A bad field: its error right next to it, the values kept.
    page.get_by_label("Base URI").fill("ftp://erp.internal")
    page.get_by_role("button", name="Save & continue").click()
    error = page.locator("#f-http-base_uri-error")
    expect(error).to_have_text("must be an http:// or https:// URL")
    base_uri = page.get_by_label("Base URI")
    expect(base_uri).to_have_attribute("aria-invalid", "true")
    expect(base_uri).to_be_focused()
    expect(page.get_by_label("Name", exact=True)).to_have_value("ERP orders")
    expect(page.get_by_label("On-premise")).to_be_checked()

    # Fixed: tested and saved; the list shows it online.
    base_uri.fill(f"http://127.0.0.1:{service}")
    page.get_by_label("Password").fill("erp-pw-7f3a")  # typed again, as the page asks
    page.get_by_role("button", name="Save & continue").click()
    expect(page.get_by_text("The connection was tested and saved.")).to_be_visible()
    expect(page.locator("#connection-state")).to_contain_text("Online")
    page.get_by_role("link", name="Close").click()
    row = page.locator("tr", has_text="ERP orders")
    expect(row).to_contain_text("Online")
    expect(row).to_contain_text(f"On-premise via {agent_online}")
    [saved] = relay.api("GET", "/v1/connections")[1]["connections"]
    assert saved["mode"] == "onpremise" and saved["state"] == "online"
    assert saved["http"]["ping"]["success_values"] == ["ok"]
    # The password typed before the tests (run in place by the page's script) was saved.
    assert saved["http"]["auth"]["basic"] == {"username": "svc", "password": "********"}

    # Edit, then Test connection on the unsaved change: the saved one is untouched.
    row.get_by_role("link", name=re.compile("Edit")).click()
    page.get_by_label("Relative URI").fill("/broken")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#test-result")).to_contain_text("HTTP 500")
    status, again = relay.api("GET", f"/v1/connections/{saved['id']}")
    assert status == 200 and again["http"]["ping"]["relative_uri"] == "/health"
    assert again["state"] == "online"

    # The agent cannot be deleted while the connection uses it: the page says which.
    page.goto(relay.url + "/console/agents")
    page.locator("tr", has_text=agent_online).get_by_role("link", name=re.compile("Delete")).click()
    page.get_by_role("button", name="Delete agent").click()
    expect(page.get_by_role("alert")).to_contain_text("Connections still use this agent")
    expect(page.get_by_role("link", name=saved["id"])).to_be_visible()
    assert len(relay.api("GET", "/v1/agents")[1]["agents"]) == 1


def test_forms_refuse_posts_without_the_csrf_token(page: Page, relay: ConsoleRelay) -> None:
    # A relay with an account offers no first-run setup, whatever the code.
    assert "console_setup" not in relay.log_text()
    answer = page.request.get(relay.url + "/console/setup/guess")
    assert answer.status == 404 and "This setup link does not work" in answer.text()
    sign_in(page, relay)
    # The browser's own cookie goes along (same context), the token does not.
    for form in ({"name": "sneaky"}, {"name": "sneaky", "csrf_token": "forged"}):
        answer = page.request.post(relay.url + "/console/agents", form=form, max_redirects=0)
        assert answer.status == 403
        assert "CSRF check failed" in answer.text()
    answer = page.request.post(relay.url + "/console/sign-out", max_redirects=0)
    assert answer.status == 403
    assert relay.api("GET", "/v1/agents")[1] == {"agents": []}
    # With the page's own token, the same form works.
    page.goto(relay.url + "/console/agents/new")
    page.get_by_label("Name", exact=True).fill("legit")
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("heading", name="Agent created: legit")).to_be_visible()
    # A taken name: said next to the field, the form kept.
    page.goto(relay.url + "/console/agents/new")
    page.get_by_label("Name", exact=True).fill("legit")
    page.get_by_label("Description").fill("second try")
    page.get_by_role("button", name="Create agent").click()
    expect(page.locator("#f-name-error")).to_contain_text("already has an agent named 'legit'")
    expect(page.get_by_label("Description")).to_have_value("second try")

    # Signed out meanwhile (the cookie gone): Test connection does not paste the
    # refusal into the form; the page goes to the sign-in page instead.
    page.goto(relay.url + "/console/connections/new")
    page.get_by_label("Name", exact=True).fill("x")
    page.context.clear_cookies()
    page.get_by_role("button", name="Test connection").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in"))


@pytest.fixture
def provider() -> Iterator[str]:
    with run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@pytest.mark.filterwarnings("ignore::authlib.deprecate.AuthlibDeprecationWarning")
def test_from_an_empty_relay_to_an_onprem_oauth_connection(
    page: Page, empty_relay: ConsoleRelay, provider: str, tmp_path: Path
) -> None:
    """From an empty relay to an on-premise OAuth 2.0 connection that tests green, all
    in the browser but starting the relay (whose log shows the first-run link):
    account, agent, iClient, connection, Save & authorize at the provider, online."""
    relay = empty_relay
    setup_url = relay.setup_url()
    page.goto(relay.url + "/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    page.goto(setup_url)
    assert_labelled(page)
    page.get_by_label("Account name").fill("acme")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Account created: acme")).to_be_visible()
    relay.api_token = page.locator("#api-token").input_value()
    assert relay.api_token.startswith("oak_")
    assert relay.api("GET", "/v1/agents") == (200, {"agents": []})
    # The link works once: now it says so, and changes nothing.
    page.goto(setup_url)
    expect(page.get_by_role("heading", name="This setup link does not work")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()  # still signed in

    token, agent_yaml = create_agent(page, relay, "idp-agent")
    page.get_by_role("link", name="Done").click()
    port = provider.rsplit(":", 1)[1]
    # The agent must reach the provider's API (the "on-premise" service here).
    with run_agent(tmp_path / "agent", agent_yaml, token, [f"localhost:{port}"]):
        row = page.locator("tr", has_text="idp-agent")
        expect(row.locator('[data-col="status"]')).to_have_text(ONLINE)

        page.goto(relay.url + "/console/iclients")
        page.get_by_role("link", name=re.compile("Create")).first.click()
        assert_labelled(page)
        page.get_by_label("Name", exact=True).fill("Mock IdP")
        page.get_by_label("Grant type").select_option("authorization_code")
        page.get_by_label("Client ID").fill("relay-console-client")
        page.get_by_label("Client secret").fill("relay-console-secret")
        page.get_by_label("Authorization URL").fill(f"{provider}/oauth2/authorize")
        page.get_by_label("Access token URL").fill(f"{provider}/oauth2/token")
        page.get_by_label("Send client credentials via").select_option("basic")
        page.get_by_label("Valid domain names").fill("localhost")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text("The iClient was saved.")).to_be_visible()
        # Edit: the secret is never shown; left empty, the stored one is kept.
        page.get_by_role("link", name="Edit Mock IdP").click()
        secret = page.get_by_label("Client secret")
        expect(secret).to_have_value("")
        expect(secret).to_have_attribute("placeholder", re.compile("stored"))
        assert "relay-console-secret" not in page.content()
        page.get_by_label("Scope delimiter").fill(",")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text("The iClient was saved.")).to_be_visible()
        [iclient] = relay.api("GET", "/v1/iclients")[1]["iclients"]
        assert iclient["client_secret"] == "********" and iclient["scope_delimiter"] == ","

        page.goto(relay.url + "/console/connections/new")
        page.get_by_label("Name", exact=True).fill("Userinfo via agent")
        page.get_by_label("On-premise").check()
        page.get_by_label("Agent").select_option(label="idp-agent (online)")
        page.get_by_label("Base URI").fill(provider)
        page.get_by_label("Authentication type").select_option("oauth2")
        page.get_by_label("iClient").select_option(label="Mock IdP (authorization code)")
        page.get_by_label("Scope", exact=True).fill("profile email")
        # The mock answers a bad bearer token with 400.
        page.get_by_label("Override HTTP status code for auth errors").fill("400")
        page.get_by_label("Relative URI").fill("/userinfo")
        page.get_by_role("button", name="Save & authorize").click()

        # The provider's consent page: sign in as alice and allow.
        expect(page).to_have_url(re.compile(re.escape(provider) + r"/oauth2/authorize"))
        page.locator('input[name="sub"]').fill("alice")
        page.locator('form[method="post"] [type="submit"]').first.click()

        # Back on the connection: authorized, tested, online.
        expect(page).to_have_url(re.compile(r"/console/connections/con_[a-z0-9]+\?"))
        expect(page.locator("#authorize-result")).to_contain_text("Authorized")
        expect(page.locator("#connection-state")).to_contain_text("Online")
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator("#test-result")).to_contain_text("Connection test passed.")
        page.get_by_role("link", name="Close").click()
        expect(page.locator("tr", has_text="Userinfo via agent")).to_contain_text("Online")


@pytest.mark.browser_context_args(java_script_enabled=False)
def test_works_without_javascript(page: Page, relay: ConsoleRelay, service: int) -> None:
    """Every section is simply shown; the forms still post and answer."""
    sign_in(page, relay)
    page.get_by_role("link", name="Create connection").click()
    expect(page.get_by_label("Agent")).to_be_visible()  # nothing hides it
    page.get_by_label("Name", exact=True).fill("Cloud health")
    page.get_by_label("Base URI").fill(f"http://127.0.0.1:{service}")
    page.get_by_label("Relative URI").fill("/health")
    page.get_by_label("Authentication type").select_option("token")
    page.get_by_label("Token", exact=True).fill("svc-token-1")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#test-result")).to_contain_text("Cloud route, HTTP 200")
    # The page came back without the secret (never sent back): it must be typed again.
    assert "svc-token-1" not in page.content()
    page.get_by_role("button", name="Save & continue").click()
    expect(page.locator("#f-http-auth-token-token-error")).to_contain_text("type it again")
    page.get_by_label("Token", exact=True).fill("svc-token-1")
    page.get_by_role("button", name="Save & continue").click()
    expect(page.get_by_text("The connection was tested and saved.")).to_be_visible()
    [saved] = relay.api("GET", "/v1/connections")[1]["connections"]
    assert saved["http"]["auth"]["token"]["token"] == "********"
