"""``onprem-relay`` end to end: in-process through ``main()``, and once as a process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig
from relay import config as relay_config
from relay.cli import main
from relay.keys import fingerprint, load_or_create_host_key
from relay.registry import Registry
from relay.registry.migrate import head_revision
from shared.config import ConfigError, load_config

SUBPROCESS_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ONPREM_RELAY_* from the developer's shell; a cwd without relay.yaml."""
    for name in list(os.environ):
        if name.startswith("ONPREM_RELAY_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


RunFn = Callable[..., Run]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> RunFn:
    def _run(*argv: str) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return _run


def assert_one_line_error(result: Run, code: int) -> str:
    assert result.code == code, (result.out, result.err)
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("onprem-relay: error: ")
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def relay_dir(tmp_path: Path, run: RunFn) -> Path:
    folder = tmp_path / "relay"
    result = run("init", "--dir", str(folder))
    assert result.code == 0, result.err
    return folder


@pytest.fixture
def cfg(relay_dir: Path) -> str:
    return str(relay_dir / "relay.yaml")


def registry_call(cfg: str, method: str, *args: object) -> Any:
    async def go() -> Any:
        config = relay_config.load(cfg)
        reg = await Registry.open(config.database_url, base_dir=config.base_dir)
        try:
            return await getattr(reg, method)(*args)
        finally:
            await reg.close()

    return asyncio.run(go())


# -- init ------------------------------------------------------------------------


def test_init_creates_everything(tmp_path: Path, run: RunFn) -> None:
    folder = tmp_path / "new" / "relay"
    result = run("init", "--dir", str(folder))
    assert result.code == 0, result.err
    for name in ["relay.yaml", "secrets.key", "ssh_host_ed25519_key", "relay.db"]:
        assert mode(folder / name) == 0o600, name
        assert str(folder / name) in result.out
    key = load_or_create_host_key(folder / "ssh_host_ed25519_key")
    assert fingerprint(key) in result.out
    assert (
        (folder / "ssh_host_ed25519_key")
        .read_bytes()
        .startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    )

    config = relay_config.load(str(folder / "relay.yaml"))
    assert config.http.listen == "127.0.0.1:8080"
    assert config.ssh.listen == "0.0.0.0:2222"
    assert config.database_url == f"sqlite+aiosqlite:///{folder / 'relay.db'}"
    assert config.path(config.ssh.host_key_file) == folder / "ssh_host_ed25519_key"
    assert config.path(config.secrets_key_file) == folder / "secrets.key"
    registry_call(str(folder / "relay.yaml"), "check_schema")


def test_init_refuses_to_overwrite(relay_dir: Path, run: RunFn) -> None:
    before = {p.name: p.read_bytes() for p in relay_dir.iterdir() if p.is_file()}
    line = assert_one_line_error(run("init", "--dir", str(relay_dir)), 1)
    assert "already exists" in line and str(relay_dir / "relay.yaml") in line
    after = {p.name: p.read_bytes() for p in relay_dir.iterdir() if p.is_file()}
    assert before["relay.yaml"] == after["relay.yaml"]
    assert before["ssh_host_ed25519_key"] == after["ssh_host_ed25519_key"]


def test_init_keeps_existing_keys(tmp_path: Path, run: RunFn) -> None:
    key = load_or_create_host_key(tmp_path / "ssh_host_ed25519_key")
    result = run("init", "--dir", str(tmp_path), "--public-url", "https://relay.example.com")
    assert result.code == 0, result.err
    assert "Kept existing SSH host key" in result.out and fingerprint(key) in result.out
    config = relay_config.load(str(tmp_path / "relay.yaml"))
    assert config.http.public_url == "https://relay.example.com"


def test_init_to_config_from_env(
    tmp_path: Path, run: RunFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "etc" / "relay.yaml"
    monkeypatch.setenv("ONPREM_RELAY_CONFIG", str(target))
    assert run("init").code == 0
    assert target.exists() and (target.parent / "relay.db").exists()
    assert run("accounts", "create", "acme").code == 0  # finds it through the env too


# -- accounts and agents ---------------------------------------------------------


def test_accounts_create(cfg: str, run: RunFn) -> None:
    result = run("accounts", "create", "acme", "--json", "--config", cfg)
    assert result.code == 0, result.err
    doc = result.json()
    assert isinstance(doc, dict) and set(doc) == {"id", "name", "api_token"}
    assert doc["name"] == "acme" and doc["id"].startswith("acc_")
    assert doc["api_token"].startswith("oak_")
    assert doc["api_token"] not in result.err
    account = registry_call(cfg, "authenticate_api_token", doc["api_token"])
    assert account is not None and account.id == doc["id"]

    text = run("accounts", "create", "beta", "--config", cfg)
    assert text.code == 0 and "oak_" in text.out and "beta" in text.out

    line = assert_one_line_error(run("accounts", "create", "acme", "--config", cfg), 1)
    assert "already exists" in line


def test_agents_create_prints_a_valid_agent_yaml(
    cfg: str, relay_dir: Path, tmp_path: Path, run: RunFn
) -> None:
    assert run("accounts", "create", "acme", "--config", cfg).code == 0
    result = run(
        "agents", "create", "--account", "acme", "gw-1", "--description", "DC 1", "--json",
        "--config", cfg,
    )  # fmt: skip
    assert result.code == 0, result.err
    doc = result.json()
    assert isinstance(doc, dict) and set(doc) == {"id", "token", "host_key", "agent_yaml"}
    assert doc["token"].startswith("oat_") and doc["token"] not in doc["agent_yaml"]
    host_key = fingerprint(load_or_create_host_key(relay_dir / "ssh_host_ed25519_key"))
    assert doc["host_key"] == host_key

    path = tmp_path / "agent.yaml"
    path.write_text(doc["agent_yaml"])
    agent_cfg = load_config(AgentConfig, path)
    assert agent_cfg.agent_id == doc["id"]
    assert agent_cfg.relay.host_key == host_key
    assert agent_cfg.relay.address == "localhost:2222"
    assert agent_cfg.token_file == "/etc/onprem-agent/token"
    assert agent_cfg.allow == []
    assert "allow" in doc["agent_yaml"].split("allow: []")[0]  # a comment explains it
    assert "localhost:2222" in result.err  # warned: agents elsewhere cannot dial that

    hashed = registry_call(cfg, "verify_agent_token", doc["id"], doc["token"])
    assert isinstance(hashed, str)

    text = run("agents", "create", "--account", "acme", "gw-2", "--config", cfg)
    assert text.code == 0
    assert "oat_" in text.out and host_key in text.out and "agent_id:" in text.out


def test_agent_yaml_relay_address(cfg: str, run: RunFn, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("accounts", "create", "acme", "--config", cfg).code == 0

    def address(name: str) -> str:
        result = run("agents", "create", "--account", "acme", name, "--json", "--config", cfg)
        assert result.code == 0, result.err
        parsed = yaml.safe_load(result.json()["agent_yaml"])
        return str(parsed["relay"]["address"])

    monkeypatch.setenv("ONPREM_RELAY_HTTP__PUBLIC_URL", "https://relay.example.com")
    assert address("a") == "relay.example.com:2222"
    monkeypatch.setenv("ONPREM_RELAY_SSH__LISTEN", "[::]:22")
    assert address("b") == "relay.example.com:22"
    monkeypatch.setenv("ONPREM_RELAY_SSH__PUBLIC_ADDRESS", "tunnel.example.com:443")
    assert address("c") == "tunnel.example.com:443"


def test_agents_list_rotate_delete(cfg: str, run: RunFn) -> None:
    assert run("accounts", "create", "acme", "--config", cfg).code == 0
    assert run("accounts", "create", "beta", "--config", cfg).code == 0
    created = run("agents", "create", "--account", "acme", "gw-1", "--json", "--config", cfg)
    agent = created.json()
    assert isinstance(agent, dict)
    assert run("agents", "create", "--account", "beta", "gw-9", "--config", cfg).code == 0

    table = run("agents", "list", "--config", cfg)
    assert table.code == 0
    header, *rows = table.out.splitlines()
    assert header.split() == [
        "ID",
        "ACCOUNT",
        "NAME",
        "STATUS",
        "VERSION",
        "LAST",
        "SEEN",
        "SESSIONS",
    ]
    assert len(rows) == 2
    assert rows[0].split() == [agent["id"], "acme", "gw-1", "offline", "-", "never", "0"]

    listed = run("agents", "list", "--account", "acme", "--json", "--config", cfg).json()
    assert isinstance(listed, list) and [a["id"] for a in listed] == [agent["id"]]
    assert listed[0]["account"] == "acme" and listed[0]["status"] == "offline"
    assert "token" not in json.dumps(listed)

    rotated = run("agents", "rotate-token", agent["id"], "--json", "--config", cfg)
    assert rotated.code == 0, rotated.err
    new = rotated.json()
    assert isinstance(new, dict) and new["id"] == agent["id"]
    assert new["token"].startswith("oat_") and new["token"] != agent["token"]
    assert registry_call(cfg, "verify_agent_token", agent["id"], agent["token"]) is None
    assert registry_call(cfg, "verify_agent_token", agent["id"], new["token"]) is not None
    text = run("agents", "rotate-token", agent["id"], "--config", cfg)
    assert text.code == 0 and "oat_" in text.out

    deleted = run("agents", "delete", agent["id"], "--config", cfg)
    assert deleted.code == 0 and agent["id"] in deleted.out
    remaining = run("agents", "list", "--json", "--config", cfg).json()
    assert isinstance(remaining, list) and [a["name"] for a in remaining] == ["gw-9"]

    events = registry_call(cfg, "list_audit")
    mine = [e for e in events if e.target_id == agent["id"]]
    assert [e.action for e in mine] == [
        "agent.deleted",
        "agent.token_rotated",
        "agent.token_rotated",
        "agent.created",
    ]
    assert all(e.actor.startswith("cli") for e in mine)

    for argv in (["agents", "delete", agent["id"]], ["agents", "rotate-token", agent["id"]]):
        line = assert_one_line_error(run(*argv, "--config", cfg), 1)
        assert "not found" in line and agent["id"] in line


def test_agents_errors(cfg: str, run: RunFn) -> None:
    line = assert_one_line_error(
        run("agents", "create", "--account", "nobody", "gw", "--config", cfg), 1
    )
    assert "nobody" in line and "not found" in line
    assert_one_line_error(run("agents", "list", "--account", "nobody", "--config", cfg), 1)
    assert run("accounts", "create", "acme", "--config", cfg).code == 0
    line = assert_one_line_error(
        run("agents", "create", "--account", "acme", "bad\tname", "--config", cfg), 2
    )
    assert "control characters" in line


# -- bad input -------------------------------------------------------------------


def test_missing_config(tmp_path: Path, run: RunFn) -> None:
    line = assert_one_line_error(run("agents", "list", "--config", str(tmp_path / "no.yaml")), 2)
    assert "no.yaml" in line and "not found" in line
    line = assert_one_line_error(run("agents", "list"), 2)  # ./relay.yaml by default
    assert "relay.yaml" in line and "init" in line


def test_yaml_syntax_error_names_the_line(tmp_path: Path, run: RunFn) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("http:\n  listen: 127.0.0.1:8080\n  public_url: [oops\n")
    line = assert_one_line_error(run("db", "upgrade", "--config", str(path)), 2)
    assert f"{path}:" in line and "YAML" in line
    assert any(f"{path}:{n}:" in line for n in (3, 4))


def test_unknown_key_and_wrong_type(tmp_path: Path, run: RunFn) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("database_url: sqlite+aiosqlite:///x.db\nssh:\n  listn: 0.0.0.0:22\n")
    line = assert_one_line_error(run("accounts", "create", "x", "--config", str(path)), 2)
    assert f"{path}:3: ssh.listn: unknown key" in line
    path.write_text("ssh:\n  keepalive_count_max: many\n")
    line = assert_one_line_error(run("agents", "list", "--config", str(path)), 2)
    assert "ssh.keepalive_count_max" in line and f"{path}:2" in line
    path.write_text("database_url: mysql://x@y/z\n")
    line = assert_one_line_error(run("agents", "list", "--config", str(path)), 2)
    assert "database_url" in line


def test_usage_errors(run: RunFn) -> None:
    assert_one_line_error(run("frobnicate"), 2)
    assert_one_line_error(run("agents", "create", "gw"), 2)  # --account missing
    assert_one_line_error(run("agents", "list", "--bogus"), 2)
    assert run().code == 2


def test_database_not_migrated_and_unreachable(tmp_path: Path, run: RunFn) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("database_url: sqlite+aiosqlite:///fresh.db\n")
    line = assert_one_line_error(run("accounts", "create", "acme", "--config", str(path)), 1)
    assert "db upgrade" in line
    assert not (tmp_path / "fresh.db").exists()  # not created as a side effect
    upgraded = run("db", "upgrade", "--config", str(path))
    assert upgraded.code == 0 and head_revision() in upgraded.out
    assert (tmp_path / "fresh.db").exists()  # relative to the config file's folder
    assert run("accounts", "create", "acme", "--config", str(path)).code == 0

    # Port 1 on loopback: refused at once, no waiting.
    path.write_text("database_url: postgresql+asyncpg://u:hunter2@127.0.0.1:1/db\n")
    line = assert_one_line_error(run("agents", "list", "--config", str(path)), 1)
    assert "database" in line and "127.0.0.1" in line and "hunter2" not in line


def test_version(run: RunFn) -> None:
    result = run("version")
    assert result.code == 0 and result.out.startswith("onprem-relay ")


# -- host key --------------------------------------------------------------------


def test_host_key_created_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ssh_host_ed25519_key"
    key = load_or_create_host_key(path)
    assert mode(path) == 0o600
    assert key.get_algorithm() == "ssh-ed25519"
    fp = fingerprint(key)
    assert fp.startswith("SHA256:") and len(fp) == 7 + 43
    assert fingerprint(load_or_create_host_key(path)) == fp
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]


def test_corrupt_host_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ssh_host_ed25519_key"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(ConfigError, match="ssh_host_ed25519_key"):
        load_or_create_host_key(path)
    assert path.read_text().endswith("garbage\n")  # never replaced


# -- as a process ----------------------------------------------------------------


def _relay(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *argv],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("ONPREM_RELAY_")}
        | (env or {}),
        check=False,
    )


def test_as_a_process(tmp_path: Path) -> None:
    folder = tmp_path / "relay"
    init = _relay("init", "--dir", str(folder))
    assert init.returncode == 0, init.stderr
    cfg = str(folder / "relay.yaml")
    again = _relay("init", "--dir", str(folder))
    assert again.returncode == 1 and "Traceback" not in again.stderr

    created = _relay("accounts", "create", "acme", "--json", env={"ONPREM_RELAY_CONFIG": cfg})
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["api_token"].startswith("oak_")
    agent = _relay("agents", "create", "--account", "acme", "gw", "--json", "--config", cfg)
    assert agent.returncode == 0, agent.stderr
    assert json.loads(agent.stdout)["token"].startswith("oat_")

    bad = tmp_path / "bad.yaml"
    bad.write_text("log: {level: loud}\n")
    failed = _relay("agents", "list", "--config", str(bad))
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr and len(failed.stderr.splitlines()) == 1
    assert f"{bad}:1: log.level" in failed.stderr


# -- PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
def test_init_with_postgresql(tmp_path: Path, pg_url: str, run: RunFn) -> None:
    folder = tmp_path / "relay"
    result = run("init", "--dir", str(folder), "--database-url", pg_url)
    assert result.code == 0, result.err
    assert not (folder / "relay.db").exists()
    cfg = str(folder / "relay.yaml")
    assert run("accounts", "create", "acme", "--config", cfg).code == 0
    assert run("agents", "create", "--account", "acme", "gw", "--config", cfg).code == 0
    listed = run("agents", "list", "--json", "--config", cfg).json()
    assert isinstance(listed, list) and len(listed) == 1
