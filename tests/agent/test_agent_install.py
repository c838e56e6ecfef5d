"""install-service / uninstall-service into an alternate root, and the audit reader."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import auditview, install
from agent.audit import AuditLog
from agent.cli import main

AGENT_YAML = """\
relay:
  address: "relay.example.com:2222"
  host_key: "SHA256:KZ0+YZvjRuANewCPaiO+Z1RakZAcRj17BMAtGVZwjok"
agent_id: agt_abc
token_file: TOKEN
allow: ["erp.internal:443"]
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    token = tmp_path / "token"
    token.write_text("oat_" + "t" * 43 + "\n")
    token.chmod(0o600)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(AGENT_YAML.replace("TOKEN", str(token)))
    return cfg


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o7777


def test_dry_run_prints_every_action_and_touches_nothing(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    assert main(["install-service", "--config", str(source), "--dry-run", "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("would ") for line in out)
    assert "would write: /etc/onprem-agent/token (mode 0600, owner root:root)" in out
    assert "would run: systemctl enable --now onprem-agent" in out
    assert not root.exists()


def test_install_twice_is_harmless_and_uninstall_undoes_it(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    assert main(["install-service", "--config", str(source), "--root", str(root)]) == 0
    first = capsys.readouterr().out
    conf = root / "etc/onprem-agent"
    assert mode(conf) == 0o750
    assert mode(conf / "agent.yaml") == 0o640
    assert mode(conf / "token") == 0o600
    assert (conf / "token").read_text().startswith("oat_")
    installed = (conf / "agent.yaml").read_text()
    assert "token_file: /etc/onprem-agent/token" in installed
    assert "oat_" not in installed  # the token lives only in the token file
    unit = root / "etc/systemd/system/onprem-agent.service"
    assert "User=onprem-agent" in unit.read_text()
    assert "done write: /etc/onprem-agent/token" in first

    assert main(["install-service", "--config", str(source), "--root", str(root)]) == 0
    second = capsys.readouterr().out
    assert "done" not in second  # nothing changed the second time

    assert main(["uninstall-service", "--root", str(root)]) == 0
    assert not conf.exists()
    assert not unit.exists()


def test_install_refuses_an_invalid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("relay: {address: x}\n")
    assert main(["install-service", "--config", str(bad), "--root", str(tmp_path / "r")]) == 2
    assert "relay.host_key" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_units_verify_and_deploy_copy_matches(tmp_path: Path) -> None:
    unit = tmp_path / "onprem-agent.service"
    unit.write_text(install.render_unit("/usr/local/bin/onprem-agent"))
    shipped = Path(__file__).parents[2] / "deploy" / "onprem-agent.service"
    assert shipped.read_text() == unit.read_text(), "regenerate deploy/onprem-agent.service"
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run 'make system-deps'"
    for path in (unit, shipped.parent / "onprem-relay.service"):
        result = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, check=False
        )
        # verify complains about the ExecStart binary missing here; nothing else.
        problems = [
            line
            for line in result.stderr.splitlines()
            if line.strip() and "/usr/local/bin/onprem-" not in line
        ]
        assert problems == [], path


def test_audit_reader_filters_by_time_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=300, backups=3)
    for i in range(6):
        log.record(origin=f"con_a/req_{i}", target="erp:443", allowed=True, result="ok")
    log.close()
    assert (tmp_path / "audit.log.1").exists()
    records = list(auditview.read_records(path, datetime.now(UTC) - timedelta(hours=1)))
    assert [r["request_id"] for r in records][-3:] == ["req_3", "req_4", "req_5"]
    assert records == sorted(records, key=lambda r: r["time"])
    assert list(auditview.read_records(path, datetime.now(UTC) + timedelta(hours=1))) == []


def test_audit_command(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.log"
    source.write_text(source.read_text() + f"audit_file: {audit}\n")
    log = AuditLog(audit)
    log.record(origin="con_x/req_y", target="erp.internal:443", allowed=False, result="not_allowed")
    log.close()
    assert main(["audit", "--config", str(source), "--since", "1h", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["connection_id"], line["target"], line["allowed"]) == (
        "con_x",
        "erp.internal:443",
        False,
    )
    assert main(["audit", "--config", str(source), "--since", "2d"]) == 0
    assert "not_allowed" in capsys.readouterr().out
    assert main(["audit", "--config", str(source), "--since", "yesterday"]) == 2


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert auditview.parse_since("1h", now) == now - timedelta(hours=1)
    assert auditview.parse_since("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="since"):
        auditview.parse_since("soon")
