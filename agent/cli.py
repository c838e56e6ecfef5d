"""``onprem-agent``: run | check | version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh

from agent import auditview, install
from agent import config as agent_config
from agent.allowlist import parse_rule
from agent.daemon import Agent, connect
from agent.errors import AuthRejectedError, FatalError, HostKeyMismatchError
from shared.config import ConfigError
from shared.logging import configure_logging
from shared.net import parse_host_port
from shared.version import __version__

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onprem-agent", description="On-premise agent")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "connect to the relay and serve streams (foreground)"),
        ("check", "diagnose config, relay reachability, host key, token, allowlist"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument(
            "--config",
            help="agent.yaml (default: env ONPREM_AGENT_CONFIG, else "
            f"{agent_config.DEFAULT_CONFIG})",
        )
    sp = sub.add_parser("install-service", help="install and start the systemd service")
    sp.add_argument("--config", help="the agent.yaml to install (default: as for run)")
    sp.add_argument("--token-file", help="read the token here (default: the config's)")
    sp.add_argument("--dry-run", action="store_true", help="print every action, change nothing")
    sp.add_argument("--no-start", action="store_true", help="enable but do not start")
    sp.add_argument("--root", help=argparse.SUPPRESS)  # alternate root, for tests/packaging
    sp = sub.add_parser("uninstall-service", help="stop and remove the systemd service")
    sp.add_argument("--dry-run", action="store_true", help="print every action, change nothing")
    sp.add_argument("--keep-config", action="store_true", help="keep /etc/onprem-agent")
    sp.add_argument("--root", help=argparse.SUPPRESS)
    sp = sub.add_parser("audit", help="what the relay reached through this agent")
    sp.add_argument("--config", help="agent.yaml (for audit_file)")
    sp.add_argument("--since", default="1h", help="30m, 1h, 7d or an ISO time (default 1h)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_parser("version", help="print the version")
    return p


def _cmd_install(args: argparse.Namespace) -> int:
    source = Path(agent_config.config_path(args.config))
    cfg = agent_config.load(str(source))  # refuse to install a config that cannot run
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(f"{args.token_file}: token file is empty")
    else:
        token = cfg.read_token()
    root = Path(args.root) if args.root else Path("/")
    if not args.dry_run and not args.root and os.geteuid() != 0:
        raise FatalError("install-service must run as root (try sudo), or use --dry-run")
    exe = shutil.which("onprem-agent") or str(Path(sys.argv[0]).resolve())
    plan = install.plan_install(
        source.read_text(encoding="utf-8"), token, exe, start=not args.no_start
    )
    for line in install.execute(plan, dry_run=args.dry_run, root=root, run_commands=not args.root):
        print(line)
    if not args.dry_run:
        print("onprem-agent service installed; status: systemctl status onprem-agent")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else Path("/")
    if not args.dry_run and not args.root and os.geteuid() != 0:
        raise FatalError("uninstall-service must run as root (try sudo), or use --dry-run")
    plan = install.plan_uninstall(keep_config=args.keep_config)
    for line in install.execute(plan, dry_run=args.dry_run, root=root, run_commands=not args.root):
        print(line)
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    cfg = agent_config.load(args.config)
    if not cfg.audit_file:
        raise ConfigError("audit_file is not set in the agent config: no audit log to read")
    try:
        since = auditview.parse_since(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    records = list(auditview.read_records(Path(cfg.audit_file), since))
    if args.json:
        for record in records:
            print(json.dumps(record))
    else:
        print(auditview.format_table(records))
    return 0


async def _run(cfg: agent_config.AgentConfig, token: str) -> int:
    agent = Agent(cfg, token)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if not stopping:
            stopping.append(loop.create_task(agent.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await agent.run()
    except FatalError as exc:
        print(f"onprem-agent: fatal: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        for task in stopping:
            await task
    return 0


def _cmd_run(config_file: str | None) -> int:
    cfg = agent_config.load(config_file)
    token = cfg.read_token()
    configure_logging(cfg.log.level, cfg.log.format)
    return asyncio.run(_run(cfg, token))


def _check(ok: bool, label: str, fix: str = "") -> bool:
    print(f"[{'ok' if ok else 'FAIL'}] {label}")
    if not ok and fix:
        print(f"       fix: {fix}")
    return ok


async def _check_relay(cfg: agent_config.AgentConfig, token: str) -> bool:
    address = cfg.relay.address
    if address.startswith(("ws://", "wss://")):
        parts = urlsplit(address)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    else:
        host, port = parse_host_port(address, default_port=2222)
    if cfg.proxy:
        phost, pport = urlsplit(cfg.proxy).hostname or "", urlsplit(cfg.proxy).port or 3128
        _check(True, f"proxy: {phost}:{pport} (the relay is reached through it)")
        host, port = phost, pport
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        _check(True, f"DNS: {host} -> {', '.join(sorted({str(i[4][0]) for i in infos}))}")
    except OSError as exc:
        return _check(False, f"DNS: {host}: {exc}", "check the relay host name and DNS")
    try:
        started = time.monotonic()
        async with asyncio.timeout(cfg.connect_timeout_s):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        ms = (time.monotonic() - started) * 1000
        _check(True, f"TCP: {host}:{port} reachable ({ms:.0f} ms)")
    except (OSError, TimeoutError) as exc:
        return _check(
            False,
            f"TCP: {host}:{port}: {type(exc).__name__}: {exc}",
            "allow outbound TCP to the relay in the firewall, or set 'proxy'",
        )
    try:
        conn, link = await connect(cfg, token)
    except AuthRejectedError as exc:
        _check(True, f"SSH: host key {cfg.relay.host_key} pinned and matching")
        return _check(False, f"SSH: {exc}", "write the current token into the token file")
    except HostKeyMismatchError as exc:
        return _check(False, f"SSH: {exc}", "copy the fingerprint printed by 'agents create'")
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        fix = "check the proxy URL and its credentials" if cfg.proxy else "is this the relay?"
        return _check(False, f"SSH: {type(exc).__name__}: {exc}", fix)
    _check(True, f"SSH: host key {cfg.relay.host_key} pinned and matching")
    _check(True, f"SSH: token accepted for {cfg.agent_id}")
    conn.close()
    with contextlib.suppress(Exception):
        await conn.wait_closed()
    await link.close()
    return True


def _cmd_check(config_file: str | None) -> int:
    path = agent_config.config_path(config_file)
    try:
        cfg = agent_config.load(config_file)
    except ConfigError as exc:
        _check(False, f"config {path}: {exc}", "fix the file; see deploy/agent.example.yaml")
        return 1
    _check(True, f"config {path} is valid")
    try:
        token = cfg.read_token()
        _check(True, "access token readable")
    except ConfigError as exc:
        _check(False, f"access token: {exc}", "write the token printed by 'agents create'")
        return 1
    ok = asyncio.run(_check_relay(cfg, token))
    if not cfg.allow:
        _check(False, "allowlist is empty: the relay can reach nothing", "add host:port entries")
        ok = False
    elif "*" in cfg.allow:
        print("[warn] allowlist has '*': the relay may reach any host; list hosts instead")
    asyncio.run(_check_allowlist(cfg))
    return 0 if ok else 1


async def _check_allowlist(cfg: agent_config.AgentConfig) -> None:
    """Can this machine reach each exact allowlist entry? Unreachable entries are
    warnings, not failures: a target may be down now, or only reachable later."""
    for entry in cfg.allow:
        rule = parse_rule(entry)
        if rule.name is not None:
            host = rule.name
        elif rule.network is not None and rule.network.num_addresses == 1:
            host = str(rule.network.network_address)
        else:
            print(f"[info] allow {entry}: a pattern, matched per request (not probed)")
            continue
        if rule.ports is None:
            print(f"[info] allow {entry}: any port (not probed)")
            continue
        port = rule.ports[0][0]
        try:
            async with asyncio.timeout(cfg.dial_timeout_s):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            print(f"[ok] allow {entry}: {host}:{port} reachable from this machine")
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            print(f"[warn] allow {entry}: {host}:{port} not reachable now ({reason})")
            print("       fix: check the name, the service, and firewalls between agent and target")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"onprem-agent {__version__}")
            return 0
        if args.command == "run":
            return _cmd_run(args.config)
        if args.command == "check":
            return _cmd_check(args.config)
        if args.command == "install-service":
            return _cmd_install(args)
        if args.command == "uninstall-service":
            return _cmd_uninstall(args)
        if args.command == "audit":
            return _cmd_audit(args)
    except ConfigError as exc:
        print(f"onprem-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FatalError as exc:
        print(f"onprem-agent: fatal: {exc}", file=sys.stderr)
        return exc.exit_code
    except install.InstallError as exc:
        print(f"onprem-agent: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"onprem-agent: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE
