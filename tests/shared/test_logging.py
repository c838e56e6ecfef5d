"""Logging setup: one JSON object per line, stdlib records routed in, secrets redacted."""

from __future__ import annotations

import base64
import io
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.logging import (
    REDACTED,
    SENSITIVE_KEYS,
    configure_logging,
    get_logger,
    is_sensitive_key,
    redact,
    redact_text,
    redact_value,
)

OAT = "oat_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U-_"
OAK = "oak_" + "zZyYxXwWvVuUtTsSrRqQpPoOnNmMlLkKjJiIhHgG0-9"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ3RfMSJ9.c2lnbmF0dXJlLXBhcnQ"
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----"
assert len(OAT) == len(OAK) == 47


@pytest.fixture
def out(log_stream: io.StringIO) -> io.StringIO:
    """configure_logging into a buffer (tests/conftest.py restores the global setup)."""
    return log_stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# --- format -------------------------------------------------------------------------


def test_json_one_event_per_line(out: io.StringIO) -> None:
    log = get_logger("relay.hub").bind(agent_id="agt_1")
    log.info("stream_opened", connection_id="con_1", request_id="req_1", target="erp:8443")
    log.warning("multi\nline\nmessage")
    first, second = lines(out)
    assert first["event"] == "stream_opened"
    assert first["level"] == "info"
    assert first["logger"] == "relay.hub"
    assert first["agent_id"] == "agt_1"
    assert first["connection_id"] == "con_1"
    assert first["target"] == "erp:8443"
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "multi\nline\nmessage"
    assert second["level"] == "warning"


def test_positional_arguments_are_formatted(out: io.StringIO) -> None:
    get_logger("x").info("dialing %s:%d", "erp.internal", 8443)
    assert lines(out)[0]["event"] == "dialing erp.internal:8443"


def test_level_filters_structlog_and_stdlib() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("warning", "json", stream)
        get_logger("a").info("hidden")
        get_logger("a").debug("hidden")
        logging.getLogger("aiohttp.access").info("hidden")
        get_logger("a").warning("shown")
        logging.getLogger("aiohttp.server").error("shown too")
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
        structlog.reset_defaults()
    assert [e["event"] for e in lines(stream)] == ["shown", "shown too"]


def test_stdlib_records_share_the_output(out: io.StringIO) -> None:
    logging.getLogger("aiohttp.client").warning("upstream %s answered %d", "api", 502)
    (event,) = lines(out)
    assert event == {
        "event": "upstream api answered 502",
        "level": "warning",
        "logger": "aiohttp.client",
        "timestamp": event["timestamp"],
    }


def test_asyncssh_chatter_is_held_back(out: io.StringIO) -> None:
    asyncssh = logging.getLogger("asyncssh")
    asyncssh.debug("packet")
    asyncssh.info("Opening SSH connection to relay")
    asyncssh.warning("Connection lost")
    assert [e["event"] for e in lines(out)] == ["Connection lost"]


def test_library_levels_can_be_chosen() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("asyncssh").level)
    try:
        configure_logging("debug", "json", stream, library_levels={"asyncssh": "info"})
        logging.getLogger("asyncssh").info("Opening SSH connection")
        logging.getLogger("asyncssh").debug("packet")
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("asyncssh").setLevel(saved[2])
        structlog.reset_defaults()
    assert [e["event"] for e in lines(stream)] == ["Opening SSH connection"]


def test_configuring_again_replaces_the_handler(out: io.StringIO) -> None:
    second = io.StringIO()
    configure_logging("info", "json", second)
    get_logger("x").info("once")
    assert out.getvalue() == ""
    assert [e["event"] for e in lines(second)] == ["once"]


def test_stderr_by_default(out: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    get_logger("x").info("to stderr", token=OAT)
    captured = capsys.readouterr()
    assert captured.out == ""
    event = json.loads(captured.err)
    assert event["event"] == "to stderr"
    assert event["token"] == REDACTED


def test_console_format_is_redacted_too(out: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    try:
        raise RuntimeError(f"rejected {OAT}")
    except RuntimeError:
        get_logger("x").exception("failed", password="hunter2-secret", agent_id="agt_9")
    text = stream.getvalue()
    assert "failed" in text
    assert "agt_9" in text
    assert "RuntimeError: rejected ********" in text
    assert "hunter2-secret" not in text
    assert OAT not in text


@pytest.mark.parametrize(("level", "fmt"), [("loud", "json"), ("info", "xml")])
def test_bad_settings_are_refused(level: str, fmt: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(level, fmt, io.StringIO())


# --- redaction corpus ---------------------------------------------------------------


def _raise(message: str) -> None:
    raise RuntimeError(message)


def test_secret_corpus_never_reaches_the_output(out: io.StringIO) -> None:
    secrets = [f"S3CR3T{i:02d}x" for i in range(40)]
    s = iter(secrets)
    log = get_logger("corpus").bind(agent_id="agt_42", token=next(s))
    log.info("bearer header", headers={"Authorization": f"Bearer {next(s)}"})
    log.info("basic header", headers={"authorization": "Basic " + basic("bob", next(s))})
    log.info(f"free text Authorization: Bearer {next(s)}")
    log.info(f"free text Basic {basic('alice', next(s))}")
    log.info(
        "query",
        url=f"https://api.example/cb?access_token={next(s)}&code={next(s)}"
        f"&client_secret={next(s)}&password={next(s)}&limit=5&state=st-keep",
    )
    log.info("nested", data={"a": [{"b": ({"PassWord": next(s)},), "keep": "kept-1"}]})
    log.info("ssh", ssh={"username": "agt_42", "password": next(s), "port": 2222})
    log.info("proxy", proxy=f"http://proxyuser:{next(s)}@proxy.corp:3128")
    log.info(
        "mixed case",
        headers={
            "X-Api-Key": next(s),
            "Proxy-Authorization": "Basic " + basic("p", next(s)),
            "Set-Cookie": f"sid={next(s)}; Path=/; HttpOnly",
            "COOKIE": f"a={next(s)}",
            "Content-Type": "application/json",
        },
    )
    log.info(f"our tokens {OAT} and {OAK} in text")
    log.info("our tokens as values", note=f"use {OAT}", raw=OAK.encode())
    log.info(
        "oauth params",
        params={"code": next(s), "state": "st-keep", "redirect_uri": "https://r/cb"},
    )
    log.info(
        "token response",
        body=f'{{"access_token": "{next(s)}", "refresh_token": "{next(s)}", '
        f'"token_type": "Bearer", "expires_in": 3600, "id_token": "{JWT}"}}',
    )
    log.info("form body", body=f"grant_type=refresh_token&refresh_token={next(s)}&client_id=c1")
    log.info("header pairs", headers=[{"name": "Authorization", "value": f"Bearer {next(s)}"}])
    log.info("header tuples", headers=[("X-Auth-Token", next(s)), ("Accept", "*/*")])
    log.info("secrets by name", client_secret=next(s), api_key=next(s), private_key=PEM)
    log.info("credentials", credentials={"user": "u", "pass": next(s)})
    log.info("error object", error=ValueError(f"bad config {{'password': '{next(s)}'}}"))
    log.info("jwt", text=f"got {JWT}")
    try:
        _raise(f"token rejected: Bearer {next(s)} (agent token {OAT})")
    except RuntimeError:
        log.exception("exception with a token")
    try:
        _raise(f"login failed for user bob, password: {next(s)}")
    except RuntimeError:
        logging.getLogger("asyncssh").error("stdlib exception", exc_info=True)
    logging.getLogger("aiohttp.client").warning(
        "GET %s with Authorization: Bearer %s",
        f"https://u:{next(s)}@api.example/",
        next(s),
    )

    used = secrets[: secrets.index(next(s))]
    text = out.getvalue()
    for secret in [*used, OAT, OAK, JWT, "b3BlbnNzaC1rZXktdjE="]:
        assert secret not in text
    for secret in used:  # base64 forms too (Basic credentials)
        assert basic("bob", secret) not in text
    events = {e["event"]: e for e in lines(out)}

    # What must survive.
    assert events["ssh"]["ssh"] == {"username": "agt_42", "password": REDACTED, "port": 2222}
    assert events["nested"]["data"] == {"a": [{"b": [{"PassWord": REDACTED}], "keep": "kept-1"}]}
    assert events["proxy"]["proxy"] == "http://proxyuser:********@proxy.corp:3128"
    assert events["mixed case"]["headers"]["Content-Type"] == "application/json"
    assert events["oauth params"]["params"]["state"] == "st-keep"
    assert events["oauth params"]["params"]["redirect_uri"] == "https://r/cb"
    assert "limit=5" in events["query"]["url"]
    assert "state=st-keep" in events["query"]["url"]
    assert events["query"]["url"].startswith("https://api.example/cb?access_token=********&")
    assert '"token_type": "Bearer"' in events["token response"]["body"]
    assert '"expires_in": 3600' in events["token response"]["body"]
    assert "grant_type=refresh_token&" in events["form body"]["body"]
    assert "client_id=c1" in events["form body"]["body"]
    assert events["header tuples"]["headers"] == [["X-Auth-Token", REDACTED], ["Accept", "*/*"]]
    assert events["bearer header"]["agent_id"] == "agt_42"
    assert events["bearer header"]["token"] == REDACTED
    assert (
        "RuntimeError: token rejected: Bearer ********"
        in events["exception with a token"]["exception"]
    )
    assert events["stdlib exception"]["logger"] == "asyncssh"
    assert "password: ********" in events["stdlib exception"]["exception"]


def test_codes_that_are_not_oauth_codes_stay(out: io.StringIO) -> None:
    log = get_logger("x")
    log.info(
        "test_result",
        ok=False,
        error={"code": "agent_offline", "message": "agent agt_1 is not connected"},
        code=502,
        state="online",
        exit_code=3,
        upstream={"code": 401, "state": "offline"},
    )
    log.info("exit code=3 status code: 401")
    first, second = lines(out)
    assert first["error"] == {"code": "agent_offline", "message": "agent agt_1 is not connected"}
    assert first["code"] == 502
    assert first["state"] == "online"
    assert first["upstream"] == {"code": 401, "state": "offline"}
    assert second["event"] == "exit code=3 status code: 401"


def test_harmless_fields_survive(out: io.StringIO) -> None:
    fields: dict[str, Any] = {
        "agent_id": "agt_1",
        "connection_id": "con_1",
        "request_id": "req_1",
        "host": "erp.internal",
        "port": 8443,
        "status": 200,
        "latency_ms": 12.5,
        "ok": True,
        "token_url": "https://idp.example/oauth/token",
        "token_file": "/etc/onprem-agent/token",
        "token_location": "header",
        "host_key": "SHA256:" + "a" * 43,
        "secrets_key_file": "/var/lib/onprem-relay/secrets.key",
        "header_scheme": "Bearer",
        "nothing": None,
        "tags": ["a", "b"],
        "message": "basic auth failed: the token expired",
    }
    get_logger("x").info("fields", **fields)
    event = lines(out)[0]
    assert {k: event[k] for k in fields} == fields


def test_unset_secrets_stay_null(out: io.StringIO) -> None:
    get_logger("x").info("cfg", token=None, password="")
    event = lines(out)[0]
    assert event["token"] is None
    assert event["password"] == REDACTED


def test_redact_processor_alone() -> None:
    event = {"event": f"x {OAT}", "Authorization": "Bearer a", "n": 1, "exc_info": True}
    assert redact(None, "info", event) == {
        "event": "x ********",
        "Authorization": REDACTED,
        "n": 1,
        "exc_info": True,  # left for format_exc_info, which runs first in our chain
    }
    assert event["Authorization"] == "Bearer a"  # the input is not modified


def test_deep_nesting_and_cycles_do_not_explode() -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = {"k": deep}
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert redact_value(deep) is not None
    assert redact_value(cyclic) is not None


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "Access_Token",
        "REFRESH-TOKEN",
        "password",
        "Passwd",
        "secret",
        "Client-Secret",
        "api_key",
        "APIKEY",
        "X-Api-Key",
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "private_key",
        "credentials",
        "db_password",
        "X-Auth-Token",
        "code_verifier",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    ["state", "code", "token_url", "token_type", "token_file", "host_key", "status", "name"],
)
def test_not_sensitive_keys(key: str) -> None:
    assert not is_sensitive_key(key)


def test_sensitive_keys_are_exported_normalized() -> None:
    assert {"token", "password", "authorization", "set_cookie", "client_secret"} <= SENSITIVE_KEYS
    assert all(k == k.lower() and "-" not in k for k in SENSITIVE_KEYS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", "Authorization: Bearer ********"),
        ("bearer abc1", "bearer ********"),
        ("Bearer abcdefghijklmnopqrstuvwxyz", "Bearer ********"),
        ("missing bearer token", "missing bearer token"),
        ("Authorization: Bearer abc", "Authorization: Bearer ********"),
        ("Cookie: a=b; c=d", "Cookie: ********"),
        ("https://u:p@h:1/x?y=1", "https://u:********@h:1/x?y=1"),
        ("https://u:p@ss@h/", "https://u:********@h/"),
        ("https://h/cb?code=abc&state=xyz", "https://h/cb?code=********&state=xyz"),
        ("code=abc&state=xyz", "code=********&state=xyz"),
        (
            "https://h/#access_token=abc&expires_in=3",
            "https://h/#access_token=********&expires_in=3",
        ),
        ("{'password': 'x'}", "{'password': '********'}"),
        ('{"Password":"x\\"y"}', '{"Password":"********"}'),
        ("password=", "password="),
        ("exit code=3", "exit code=3"),
        ("basic auth failed", "basic auth failed"),
        ("token_type=bearer", "token_type=bearer"),
        ("https://relay.example.com:2222", "https://relay.example.com:2222"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


_SECRET = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~",
    min_size=6,
    max_size=40,
).map(lambda s: "Zq" + s)

_TEMPLATES = [
    "Authorization: Bearer {}",
    "authorization: bearer {}",
    "Proxy-Authorization: Bearer {}",
    "https://api.example/x?a=1&access_token={}&b=2",
    "https://api.example/x?client_secret={}",
    "https://api.example/cb?code={}&state=1",
    "http://user:{}@proxy.corp:3128",
    "socks5://u:{}@10.0.0.1:1080/",
    "{{'password': '{}'}}",
    '{{"refresh_token": "{}"}}',
    "password={}",
    "x-api-key: {}",
    "Cookie: session={}; theme=dark",
    "client_secret={}&grant_type=client_credentials",
]


@settings(max_examples=100, deadline=None)
@given(secret=_SECRET, template=st.sampled_from(_TEMPLATES), prefix=st.text(max_size=10))
def test_secret_shapes_property(secret: str, template: str, prefix: str) -> None:
    text = prefix + " " + template.format(secret)
    assert secret not in redact_text(text)
    assert secret not in json.dumps(redact_value({"message": text, "nested": [(text,)]}))


@settings(max_examples=50, deadline=None)
@given(
    key=st.sampled_from(sorted(SENSITIVE_KEYS)),
    case=st.sampled_from([str.lower, str.upper, str.title]),
    dash=st.booleans(),
    secret=_SECRET,
)
def test_sensitive_key_any_case_any_depth(key: str, case: Any, dash: bool, secret: str) -> None:
    name = case(key.replace("_", "-") if dash else key)
    value = {"outer": [{"inner": ({name: secret},)}]}
    assert secret not in json.dumps(redact_value(value))
