"""``onprem-relay``: set up, run and administer the relay (design section 4).

Secrets (API and access tokens) go to stdout only, once; every failure is one line on
stderr, exit code 2 for bad configuration or usage and 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pydantic
from sqlalchemy.exc import SQLAlchemyError

from relay import config as relay_config
from relay.config import HttpConfig, RelayConfig, SshConfig
from relay.errors import RelayError
from relay.keys import fingerprint, load_or_create_host_key
from relay.registry import AgentInfo, Registry, SecretBox
from relay.registry.db import describe_error, is_memory, resolve_url
from shared.config import ConfigError, format_validation_error
from shared.net import parse_host_port
from shared.version import __version__, is_outdated

PROG = "onprem-relay"
CONFIG_NAME = "relay.yaml"
AGENT_TOKEN_FILE = "/etc/onprem-agent/token"
AGENT_CONFIG_FILE = "/etc/onprem-agent/agent.yaml"
INIT_HTTP_LISTEN = "127.0.0.1:8080"
INIT_SSH_LISTEN = "0.0.0.0:2222"
# A session not refreshed for this many presence intervals belongs to a relay process
# that died without clearing it: the CLI does not count it as online.
STALE_PRESENCE_INTERVALS = 3
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


class CommandError(Exception):
    """The command could not be done (exit code 1); the message is for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


def _print_json(obj: Any) -> None:
    _out(json.dumps(obj, indent=2, ensure_ascii=False))


# -- configuration and registry --------------------------------------------------


def _actor() -> str:
    """Who made a change from the command line, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name and no passwd entry (containers)
        return "cli"


def _load_config(args: argparse.Namespace) -> RelayConfig:
    try:
        return relay_config.load(args.config)
    except ConfigError as exc:
        if str(exc).endswith("file not found"):
            raise ConfigError(
                f"{exc} (create one with '{PROG} init', or pass --config FILE "
                "or set ONPREM_RELAY_CONFIG)"
            ) from None
        raise


@asynccontextmanager
async def _registry(config: RelayConfig, *, check_schema: bool = True) -> AsyncIterator[Registry]:
    registry = await Registry.open(
        config.database_url,
        base_dir=config.base_dir,
        stale_session_after_s=STALE_PRESENCE_INTERVALS * config.ssh.presence_interval_s,
    )
    try:
        if check_schema:
            await registry.check_schema()
        yield registry
    except (SQLAlchemyError, OSError) as exc:
        raise CommandError(f"database {registry.url}: {describe_error(exc)}") from None
    finally:
        await registry.close()


def agent_relay_address(config: RelayConfig) -> str:
    """What agents dial: ``ssh.public_address``, else public_url's host + SSH port."""
    if config.ssh.public_address:
        return config.ssh.public_address
    host = urlsplit(config.http.public_url).hostname
    if not host:
        raise ConfigError(
            f"http.public_url: no host name in {config.http.public_url!r}; "
            "set ssh.public_address to the host:port agents dial"
        )
    _, port = parse_host_port(config.ssh.listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_agent_yaml(agent: AgentInfo, account_name: str, address: str, host_key: str) -> str:
    """A complete agent.yaml for ``agent`` (valid for ``agent.config.AgentConfig``)."""

    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar

    return (
        f"# onprem-agent configuration for agent {agent.name} ({agent.id}),\n"
        f"# account {account_name}. Install as {AGENT_CONFIG_FILE}.\n"
        "relay:\n"
        f"  address: {q(address)}\n"
        "  # The relay's SSH host key: the agent refuses to talk to any other.\n"
        f"  host_key: {q(host_key)}\n"
        f"agent_id: {q(agent.id)}\n"
        "# The access token, alone in a file readable only by the agent's user\n"
        "# (chmod 600), or in env ONPREM_AGENT_TOKEN.\n"
        f"token_file: {AGENT_TOKEN_FILE}\n"
        "# Hosts the relay may reach through this agent. Empty allows nothing: add the\n"
        "# host:port entries of the on-premise APIs, for example\n"
        "#   allow:\n"
        '#     - "erp.internal:8443"\n'
        '#     - "10.20.0.0/16:443"\n'
        '#     - "*.corp.example:80,443"\n'
        "allow: []\n"
        "log:\n"
        "  level: info\n"
        "  format: json\n"
    )


def _format_time(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    head = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in [head, *lines])


# -- commands --------------------------------------------------------------------


def _init_target(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir).expanduser().resolve() / CONFIG_NAME
    return Path(relay_config.config_path(args.config)).expanduser().resolve()


def render_relay_yaml(config: RelayConfig) -> str:
    def q(value: str) -> str:
        return json.dumps(value)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return (
        f"# onprem-relay configuration, written by '{PROG} init' on {stamp}.\n"
        "# Every key can be overridden by env ONPREM_RELAY_<KEY> (nested: SSH__LISTEN).\n"
        f"database_url: {q(config.database_url)}\n"
        "# Encrypts secrets at rest: keep it, back it up, never share it.\n"
        f"secrets_key_file: {q(config.secrets_key_file)}\n"
        "http:\n"
        f"  listen: {q(config.http.listen)}\n"
        "  # The URL callers and OAuth providers use to reach this relay.\n"
        f"  public_url: {q(config.http.public_url)}\n"
        "ssh:\n"
        f"  listen: {q(config.ssh.listen)}\n"
        "  # Agents pin this key's fingerprint: keep the file.\n"
        f"  host_key_file: {q(config.ssh.host_key_file)}\n"
        "  # The host:port agents dial, if not public_url's host with the listen port:\n"
        "  # public_address: relay.example.com:2222\n"
        "cloud:\n"
        "  deny_private_networks: true\n"
        "log:\n"
        "  level: info\n"
        "  format: json\n"
    )


def _cmd_init(args: argparse.Namespace) -> int:
    target = _init_target(args)
    if target.exists():
        raise CommandError(f"{target} already exists: not overwriting it")
    folder = target.parent
    try:
        config = RelayConfig(
            database_url=args.database_url or f"sqlite+aiosqlite:///{folder / 'relay.db'}",
            secrets_key_file=str(folder / "secrets.key"),
            http=HttpConfig(listen=INIT_HTTP_LISTEN, public_url=args.public_url),
            ssh=SshConfig(
                listen=INIT_SSH_LISTEN, host_key_file=str(folder / "ssh_host_ed25519_key")
            ),
            base_dir=str(folder),
        )
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "init", None)) from None
    url = resolve_url(config.database_url, folder)  # a bad --database-url fails first
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    if url.get_backend_name() == "sqlite" and not is_memory(url):
        # The database holds encrypted secrets and token hashes: owner only. SQLite
        # gives its -wal and -shm files the database file's mode.
        db_path = Path(str(url.database))
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    made: list[str] = []
    secrets_path = Path(config.secrets_key_file)
    had_secrets = secrets_path.exists()
    SecretBox.load_or_create(secrets_path)
    made.append(
        f"{'Kept existing' if had_secrets else 'Created'} secrets key  {secrets_path} (mode 0600)"
    )
    key_path = Path(config.ssh.host_key_file)
    had_key = key_path.exists()
    host_key = load_or_create_host_key(key_path)
    made.append(
        f"{'Kept existing' if had_key else 'Created'} SSH host key {key_path} "
        f"({fingerprint(host_key)})"
    )

    async def migrate() -> str:
        async with _registry(config, check_schema=False) as registry:
            await registry.upgrade()
            revision = await registry.schema_revision()
            return f"Migrated database    {registry.url} to revision {revision}"

    made.append(asyncio.run(migrate()))

    # Written last, so a failed init can simply be run again.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandError(f"{target} already exists: not overwriting it") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render_relay_yaml(config))
    made.insert(0, f"Created config       {target}")

    for line in made:
        _out(line)
    cfg = "" if target == Path(CONFIG_NAME).resolve() else f" --config {target}"
    _out()
    _out("Next steps:")
    _out(f"  {PROG} accounts create NAME{cfg}")
    _out(f"  {PROG} agents create --account NAME AGENT_NAME{cfg}")
    _out(f"  {PROG} serve{cfg}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _load_config(args)
    from relay.server import serve

    asyncio.run(serve(config))
    return EXIT_OK


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _load_config(args)

    async def run() -> tuple[str, str | None]:
        async with _registry(config, check_schema=False) as registry:
            await registry.upgrade()
            return registry.url, await registry.schema_revision()

    url, revision = asyncio.run(run())
    _out(f"Database {url} is at revision {revision}")
    return EXIT_OK


def _cmd_accounts_create(args: argparse.Namespace) -> int:
    config = _load_config(args)

    async def run() -> tuple[str, str]:
        async with _registry(config) as registry:
            account, token = await registry.create_account(args.name, actor=_actor())
            return account.id, token

    account_id, token = asyncio.run(run())
    if args.json:
        _print_json({"id": account_id, "name": args.name, "api_token": token})
    else:
        _out(f"Created account {account_id} ({args.name})")
        _out()
        _out("API token (shown only now: store it in your secret manager):")
        _out(token)
    return EXIT_OK


def _cmd_agents_create(args: argparse.Namespace) -> int:
    config = _load_config(args)
    address = agent_relay_address(config)
    host_key = fingerprint(load_or_create_host_key(config.path(config.ssh.host_key_file)))

    async def run() -> tuple[AgentInfo, str]:
        async with _registry(config) as registry:
            account = await registry.get_account_by_name(args.account)
            return await registry.create_agent(
                account.id, args.agent_name, args.description, actor=_actor()
            )

    agent, token = asyncio.run(run())
    agent_yaml = render_agent_yaml(agent, args.account, address, host_key)
    if urlsplit(f"//{address}").hostname in _LOCAL_HOSTS:
        _note(
            f"note: the agent will dial {address}, which only works on this machine; "
            "set ssh.public_address or http.public_url in the relay config"
        )
    if args.json:
        _print_json(
            {"id": agent.id, "token": token, "host_key": host_key, "agent_yaml": agent_yaml}
        )
        return EXIT_OK
    _out(f"Created agent {agent.id} ({agent.name}) in account {args.account}")
    _out()
    _out(f"Access token (shown only now; on the agent machine, store it in {AGENT_TOKEN_FILE}")
    _out("with mode 0600, readable only by the agent's user):")
    _out(token)
    _out()
    _out(f"Relay host key: {host_key}")
    _out()
    _out(f"{AGENT_CONFIG_FILE}:")
    _out()
    _out(agent_yaml.rstrip("\n"))
    return EXIT_OK


def _cmd_agents_list(args: argparse.Namespace) -> int:
    config = _load_config(args)

    async def run() -> tuple[list[AgentInfo], dict[str, str]]:
        async with _registry(config) as registry:
            if args.account is not None:
                account = await registry.get_account_by_name(args.account)
                return await registry.list_agents(account.id), {account.id: account.name}
            names = {a.id: a.name for a in await registry.list_accounts()}
            return await registry.list_agents(), names

    agents, account_names = asyncio.run(run())
    agents.sort(key=lambda a: (account_names.get(a.account_id, a.account_id), a.name, a.id))
    minimum = config.min_agent_version

    def outdated(a: AgentInfo) -> bool:
        versions: list[str | None] = [s.client_version for s in a.sessions] or [a.version]
        return any(is_outdated(v, minimum) for v in versions)

    if args.json:
        _print_json(
            [
                {
                    **a.to_json(),
                    "account": account_names.get(a.account_id, a.account_id),
                    "outdated": outdated(a),
                }
                for a in agents
            ]
        )
        return EXIT_OK
    if not agents:
        _note("no agents" + (f" in account {args.account}" if args.account else ""))
        return EXIT_OK
    rows = [
        [
            a.id,
            account_names.get(a.account_id, a.account_id),
            a.name,
            a.status,
            (a.version or "-") + (" (OUTDATED)" if outdated(a) else ""),
            _format_time(a.last_seen),
            str(len(a.sessions)),
        ]
        for a in agents
    ]
    _out(_table(["ID", "ACCOUNT", "NAME", "STATUS", "VERSION", "LAST SEEN", "SESSIONS"], rows))
    return EXIT_OK


def _cmd_agents_rotate(args: argparse.Namespace) -> int:
    config = _load_config(args)

    async def run() -> str:
        async with _registry(config) as registry:
            return await registry.rotate_agent_token(args.agent_id, actor=_actor())

    token = asyncio.run(run())
    if args.json:
        _print_json({"id": args.agent_id, "token": token})
        return EXIT_OK
    _out(f"Rotated the access token of agent {args.agent_id}: the old token no longer works")
    _out("and the sessions that used it are dropped. New token (shown only now; replace")
    _out(f"the content of {AGENT_TOKEN_FILE} on the agent machine with it):")
    _out(token)
    return EXIT_OK


def _cmd_agents_delete(args: argparse.Namespace) -> int:
    config = _load_config(args)

    async def run() -> AgentInfo:
        async with _registry(config) as registry:
            agent = await registry.get_agent(args.agent_id)
            await registry.delete_agent(args.agent_id, actor=_actor())
            return agent

    agent = asyncio.run(run())
    _out(f"Deleted agent {agent.id} ({agent.name})")
    return EXIT_OK


def _cmd_version(args: argparse.Namespace) -> int:
    _out(f"{PROG} {__version__}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help=f"relay config (default: env ONPREM_RELAY_CONFIG, else ./{CONFIG_NAME})",
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON document")

    parser = _Parser(prog=PROG, description="The cloud relay of onprem agents.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        group: Any,
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_: str,
        *parents: Any,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_, description=help_, parents=[common, *parents]
        )
        sub.set_defaults(handler=handler)
        return sub

    def group_of(name: str, help_: str) -> Any:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.set_defaults(handler=None, group=sub)
        return sub.add_subparsers(title="commands", metavar="COMMAND")

    init = command(
        commands, "init", _cmd_init, "write relay.yaml, secrets key, SSH host key, database"
    )
    init.add_argument("--dir", metavar="DIR", help="write DIR/relay.yaml and the data files in DIR")
    init.add_argument(
        "--public-url",
        default=HttpConfig.model_fields["public_url"].default,
        metavar="URL",
        help="the relay's public URL (its host is what agents dial)",
    )
    init.add_argument(
        "--database-url", metavar="URL", help="default: a SQLite file next to relay.yaml"
    )
    command(commands, "serve", _cmd_serve, "run the relay (HTTP API and SSH endpoint)")

    db = group_of("db", "database maintenance")
    command(db, "upgrade", _cmd_db_upgrade, "migrate the database to this version")

    accounts = group_of("accounts", "manage accounts")
    create = command(
        accounts, "create", _cmd_accounts_create, "create an account, print its API token", as_json
    )
    create.add_argument("name", metavar="NAME")

    agents = group_of("agents", "manage agents")
    create = command(
        agents,
        "create",
        _cmd_agents_create,
        "create an agent, print its access token and agent.yaml",
        as_json,
    )
    create.add_argument("--account", required=True, metavar="NAME", help="the owning account")
    create.add_argument("agent_name", metavar="AGENT_NAME")
    create.add_argument("--description", default="", metavar="TEXT")
    listing = command(agents, "list", _cmd_agents_list, "list agents and their status", as_json)
    listing.add_argument("--account", metavar="NAME", help="only this account's agents")
    rotate = command(
        agents, "rotate-token", _cmd_agents_rotate, "replace an agent's access token", as_json
    )
    rotate.add_argument("agent_id", metavar="AGENT_ID")
    delete = command(agents, "delete", _cmd_agents_delete, "delete an agent")
    delete.add_argument("agent_id", metavar="AGENT_ID")

    command(commands, "version", _cmd_version, "print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(f"{exc} (see '{PROG} --help')", EXIT_USAGE)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler = getattr(args, "handler", None)
    if handler is None:
        group = getattr(args, "group", parser)
        group.print_help(sys.stderr)
        return EXIT_USAGE
    # The one place that turns every error into one line: no traceback, no secret.
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigError, UsageError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (CommandError, RelayError) as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except ValueError as exc:  # invalid names and the like, from the registry
        return _fail(str(exc), EXIT_USAGE)
    except (SQLAlchemyError, OSError) as exc:
        return _fail(describe_error(exc), EXIT_FAILURE)
    except Exception as exc:
        return _fail(f"unexpected {type(exc).__name__}: {describe_error(exc)}", EXIT_FAILURE)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return code
