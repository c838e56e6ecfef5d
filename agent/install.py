"""``onprem-agent install-service`` / ``uninstall-service``: a plan of small actions
(user, directories, files with modes and owners, systemctl calls), printed by
``--dry-run`` and applied otherwise. Every action checks the current state first, so
running the command twice changes nothing the second time."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

SERVICE = "onprem-agent"
USER = "onprem-agent"
CONF_DIR = Path("/etc/onprem-agent")
STATE_DIR = Path("/var/lib/onprem-agent")
UNIT_PATH = Path("/etc/systemd/system/onprem-agent.service")

UNIT_TEMPLATE = """\
# systemd unit for the on-premise agent, written by 'onprem-agent install-service'.
# It runs as the unprivileged system user onprem-agent. The token file stays
# root-only (0600): systemd hands the service a private copy via LoadCredential and
# ONPREM_AGENT_TOKEN_FILE points the agent at it.

[Unit]
Description=onprem-agent: reverse SSH tunnel to the cloud relay
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=onprem-agent
Group=onprem-agent
ExecStart={exec_path} run --config /etc/onprem-agent/agent.yaml
LoadCredential=token:/etc/onprem-agent/token
Environment=ONPREM_AGENT_TOKEN_FILE=%d/token
Restart=always
RestartSec=5
# Bad config (2), token rejected (3), relay host key mismatch (4): a restart cannot help.
RestartPreventExitStatus=2 3 4
TimeoutStopSec=20
KillSignal=SIGTERM
StateDirectory=onprem-agent
StateDirectoryMode=0750
UMask=0027

NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
DevicePolicy=closed
KeyringMode=private

[Install]
WantedBy=multi-user.target
"""


def render_unit(exec_path: str) -> str:
    return UNIT_TEMPLATE.format(exec_path=exec_path)


class InstallError(Exception):
    """Installing or removing the service failed; the message says what to do."""


@dataclass(frozen=True)
class Action:
    """One step. ``describe`` is what --dry-run prints; ``apply`` does it (and
    returns False when there was nothing to do)."""

    kind: str
    target: str
    mode: int | None = None
    owner: str | None = None  # "user:group"
    content: bytes | None = None
    argv: tuple[str, ...] = ()

    def describe(self) -> str:
        extra = []
        if self.mode is not None:
            extra.append(f"mode {self.mode:04o}")
        if self.owner:
            extra.append(f"owner {self.owner}")
        suffix = f" ({', '.join(extra)})" if extra else ""
        if self.kind == "run":
            return f"run: {' '.join(self.argv)}"
        return f"{self.kind}: {self.target}{suffix}"


def _ids(owner: str | None) -> tuple[int, int] | None:
    if owner is None:
        return None
    user, _, group = owner.partition(":")
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid
    except KeyError:
        return None  # under --root the user may not exist: keep the current owner


def _apply(action: Action, root: Path, run_commands: bool) -> bool | None:
    """True: changed; False: already so; None: skipped (no commands under --root)."""
    path = root / action.target.lstrip("/") if action.kind != "run" else Path()
    ids = _ids(action.owner)
    if action.kind == "user":
        try:
            pwd.getpwnam(action.target)
            return False
        except KeyError:
            pass
        if not run_commands:
            return None
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                str(STATE_DIR),
                "--shell",
                "/usr/sbin/nologin",
                action.target,
            ],
            check=True,
        )
        return True
    if action.kind == "mkdir":
        changed = not path.is_dir()
        path.mkdir(parents=True, exist_ok=True)
        if action.mode is not None and (path.stat().st_mode & 0o7777) != action.mode:
            path.chmod(action.mode)
            changed = True
        if ids and (path.stat().st_uid, path.stat().st_gid) != ids:
            os.chown(path, *ids)
            changed = True
        return changed
    if action.kind == "write":
        assert action.content is not None and action.mode is not None
        if path.exists() and path.read_bytes() == action.content:
            changed = False
        else:
            # Write a private temp file and rename it: no moment where the file
            # exists with the wrong mode or half its content.
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(action.content)
                os.chmod(tmp, action.mode)
                if ids:
                    os.chown(tmp, *ids)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            changed = True
        if (path.stat().st_mode & 0o7777) != action.mode:
            path.chmod(action.mode)
            changed = True
        if ids and (path.stat().st_uid, path.stat().st_gid) != ids:
            os.chown(path, *ids)
            changed = True
        return changed
    if action.kind == "remove":
        if path.is_dir():
            shutil.rmtree(path)
            return True
        if path.exists() or path.is_symlink():
            path.unlink()
            return True
        return False
    if action.kind == "deluser":
        try:
            pwd.getpwnam(action.target)
        except KeyError:
            return False
        if not run_commands:
            return None
        subprocess.run(["userdel", action.target], check=True)
        return True
    if action.kind == "run":
        if not run_commands:
            return None
        result = subprocess.run(list(action.argv), check=False, capture_output=True)
        if result.returncode != 0 and action.target != "best-effort":
            err = result.stderr.decode(errors="replace").strip()
            raise InstallError(f"{' '.join(action.argv)} failed: {err}")
        return True
    raise AssertionError(action.kind)


def agent_yaml_for_service(source_yaml: str) -> str:
    """The agent.yaml to install: the given one with token_file pointing at the
    installed token and the audit log in the state directory (unless set)."""
    data = yaml.safe_load(source_yaml) or {}
    if not isinstance(data, dict):
        raise InstallError("the agent config is not a YAML mapping")
    data["token_file"] = str(CONF_DIR / "token")
    data.pop("token", None)
    data.setdefault("audit_file", str(STATE_DIR / "audit.log"))
    header = "# Installed by 'onprem-agent install-service'. The token is in token (0600).\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def plan_install(agent_yaml: str, token: str, exec_path: str, *, start: bool) -> list[Action]:
    owner = f"root:{USER}"
    actions = [
        Action("user", USER),
        Action("mkdir", str(CONF_DIR), mode=0o750, owner=owner),
        Action(
            "write",
            str(CONF_DIR / "agent.yaml"),
            mode=0o640,
            owner=owner,
            content=agent_yaml_for_service(agent_yaml).encode(),
        ),
        Action(
            "write",
            str(CONF_DIR / "token"),
            mode=0o600,
            owner="root:root",
            content=(token.strip() + "\n").encode(),
        ),
        Action(
            "write",
            str(UNIT_PATH),
            mode=0o644,
            owner="root:root",
            content=render_unit(exec_path).encode(),
        ),
        Action("run", "required", argv=("systemctl", "daemon-reload")),
    ]
    if start:
        actions.append(Action("run", "required", argv=("systemctl", "enable", "--now", SERVICE)))
        actions.append(Action("run", "required", argv=("systemctl", "restart", SERVICE)))
    else:
        actions.append(Action("run", "required", argv=("systemctl", "enable", SERVICE)))
    return actions


def plan_uninstall(*, keep_config: bool) -> list[Action]:
    actions = [
        Action("run", "best-effort", argv=("systemctl", "disable", "--now", SERVICE)),
        Action("remove", str(UNIT_PATH)),
        Action("run", "best-effort", argv=("systemctl", "daemon-reload")),
        Action("remove", str(STATE_DIR)),
    ]
    if not keep_config:
        actions.append(Action("remove", str(CONF_DIR)))
    actions.append(Action("deluser", USER))
    return actions


def execute(actions: list[Action], *, dry_run: bool, root: Path, run_commands: bool) -> list[str]:
    """Apply (or only describe) the plan; returns the lines to print."""
    lines = []
    for action in actions:
        if dry_run:
            lines.append(f"would {action.describe()}")
            continue
        changed = _apply(action, root, run_commands)
        status = "skip" if changed is None else "done" if changed else "ok  "
        lines.append(f"{status} {action.describe()}")
    return lines
