"""agent.yaml: validation, errors that name file/key/line, token file, env overrides."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG, AgentConfig, config_path, load
from shared.config import ConfigError

HOST_KEY = "SHA256:" + "nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"
assert len(HOST_KEY) == 7 + 43

VALID = f"""
relay:
  address: relay.example.com:2222
  host_key: "{HOST_KEY}"
agent_id: agt_0123abc
token_file: TOKEN_FILE
allow:
  - "erp.internal:8443"
  - "10.20.0.0/16:443"
  - "*.corp.example:80,443"
proxy: http://user:pass@proxy.corp:3128
connections: 2
health_listen: 127.0.0.1:9470
log: {{level: debug, format: console}}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("ONPREM_AGENT_"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("oat_file-token\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def write(tmp_path: Path, text: str, token_file: Path | None = None) -> Path:
    path = tmp_path / "agent.yaml"
    text = textwrap.dedent(text).lstrip("\n")
    if token_file is not None:
        text = text.replace("TOKEN_FILE", str(token_file))
    path.write_text(text, encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def test_valid_agent_yaml(tmp_path: Path, token_file: Path) -> None:
    cfg = load(str(write(tmp_path, VALID, token_file)))
    assert cfg.relay.address == "relay.example.com:2222"
    assert cfg.relay.host_key == HOST_KEY
    assert cfg.agent_id == "agt_0123abc"
    assert cfg.allow == ["erp.internal:8443", "10.20.0.0/16:443", "*.corp.example:80,443"]
    assert cfg.connections == 2
    assert cfg.log.level == "debug"
    assert cfg.log.format == "console"
    assert cfg.read_token() == "oat_file-token"


def test_minimal_agent_yaml_has_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        relay: {{address: "wss://relay.example.com/v1/tunnel", host_key: "{HOST_KEY}"}}
        agent_id: agt_1
        """,
    )
    cfg = load(str(path))
    assert cfg.allow == []
    assert cfg.connections == 1
    assert cfg.log.format == "json"
    assert cfg.backoff_initial_s == 1.0
    assert cfg.backoff_max_s == 60.0


def test_example_in_the_design_parses(tmp_path: Path) -> None:
    cfg = load(str(write(tmp_path, VALID.replace("TOKEN_FILE", "/etc/onprem-agent/token"))))
    assert isinstance(cfg, AgentConfig)


@pytest.mark.parametrize(
    "host_key",
    [
        "nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8",  # no SHA256: prefix
        "SHA256:short",
        "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE",
        "",
    ],
)
def test_bad_host_key_names_file_key_and_line(tmp_path: Path, host_key: str) -> None:
    path = write(tmp_path, VALID.replace(HOST_KEY, host_key).replace("TOKEN_FILE", "/t"))
    with pytest.raises(ConfigError) as info:
        load(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line_of(path, 'host_key:')}: relay.host_key: ")
    assert "SHA256:" in message


def test_bad_allow_entry_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        VALID.replace('"10.20.0.0/16:443"', '"10.20.0.0/16"').replace("TOKEN_FILE", "/t"),
    )
    with pytest.raises(ConfigError) as info:
        load(str(path))
    message = str(info.value)
    assert "allow" in message
    assert "'10.20.0.0/16'" in message
    assert "missing port" in message
    # The entry's own line, or (with a list-level validator) the line of "allow:".
    lines = {line_of(path, '"10.20.0.0/16"'), line_of(path, "allow:")}
    assert any(message.startswith(f"{path}:{n}: allow") for n in lines), message


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("agent_id", "agent-1", "agent_id"),
        ("connections", "0", "connections"),
        ("connections", "many", "connections"),
        ("health_listen", "nowhere", "health_listen"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, key: str, value: str, needle: str) -> None:
    text = VALID.replace("TOKEN_FILE", "/t")
    lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.split("\n")]
    path = write(tmp_path, "\n".join(lines))
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value).startswith(f"{path}:{line_of(path, key + ':')}: {needle}: ")


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("TOKEN_FILE", "/t") + "alow: []\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value) == f"{path}:{line_of(path, 'alow:')}: alow: unknown key"


def test_missing_relay_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "agent_id: agt_1\n")
    with pytest.raises(ConfigError, match="relay: Field required"):
        load(str(path))


# --- token --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_token_file_is_accepted(tmp_path: Path, token_file: Path, mode: int) -> None:
    token_file.chmod(mode)
    cfg = load(str(write(tmp_path, VALID, token_file)))
    assert cfg.read_token() == "oat_file-token"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_readable_by_others_is_refused(
    tmp_path: Path, token_file: Path, mode: int
) -> None:
    token_file.chmod(mode)
    cfg = load(str(write(tmp_path, VALID, token_file)))
    with pytest.raises(ConfigError) as info:
        cfg.read_token()
    message = str(info.value)
    assert str(token_file) in message
    assert f"{mode:04o}" in message
    assert "chmod 600" in message


def test_missing_or_empty_token_file(tmp_path: Path, token_file: Path) -> None:
    cfg = load(str(write(tmp_path, VALID, tmp_path / "absent")))
    with pytest.raises(ConfigError, match="cannot read token file"):
        cfg.read_token()
    token_file.write_text("\n", encoding="utf-8")
    cfg = load(str(write(tmp_path, VALID, token_file)))
    with pytest.raises(ConfigError, match="token file is empty"):
        cfg.read_token()


def test_no_token_at_all(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("token_file: TOKEN_FILE\n", ""))
    with pytest.raises(ConfigError, match="ONPREM_AGENT_TOKEN"):
        load(str(path)).read_token()


def test_env_token_wins_over_the_file(
    tmp_path: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file.chmod(0o644)  # not even read when the env var is set
    monkeypatch.setenv("ONPREM_AGENT_TOKEN", "oat_from-env")
    cfg = load(str(write(tmp_path, VALID, token_file)))
    assert cfg.read_token() == "oat_from-env"
    assert "oat_from-env" not in repr(cfg)


@pytest.mark.parametrize("token", ["123456", "true", "null", "0600"])
def test_env_token_that_looks_like_another_type(
    tmp_path: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("ONPREM_AGENT_TOKEN", token)
    assert load(str(write(tmp_path, VALID, token_file))).read_token() == token


def test_env_overrides_nested_settings(
    tmp_path: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONPREM_AGENT_RELAY__ADDRESS", "other.example.com:22")
    monkeypatch.setenv("ONPREM_AGENT_CONNECTIONS", "4")
    monkeypatch.setenv("ONPREM_AGENT_LOG__LEVEL", "warning")
    monkeypatch.setenv("ONPREM_AGENT_ALLOW", '["db.internal:5432"]')
    cfg = load(str(write(tmp_path, VALID, token_file)))
    assert cfg.relay.address == "other.example.com:22"
    assert cfg.relay.host_key == HOST_KEY  # the rest of relay: still from the file
    assert cfg.connections == 4
    assert cfg.log.level == "warning"
    assert cfg.allow == ["db.internal:5432"]


def test_bad_allow_entry_from_env_is_named(
    tmp_path: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONPREM_AGENT_ALLOW", '["http://db.internal:5432"]')
    with pytest.raises(ConfigError, match=r"http://db\.internal:5432"):
        load(str(write(tmp_path, VALID, token_file)))


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path(None) == DEFAULT_CONFIG
    monkeypatch.setenv("ONPREM_AGENT_CONFIG", "/from/env.yaml")
    assert config_path(None) == "/from/env.yaml"
    assert config_path("/explicit.yaml") == "/explicit.yaml"


def test_config_path_env_is_not_a_config_key(
    tmp_path: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VALID, token_file)
    monkeypatch.setenv("ONPREM_AGENT_CONFIG", str(path))
    assert load().agent_id == "agt_0123abc"
