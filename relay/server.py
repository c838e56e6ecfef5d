"""``onprem-relay serve``: the registry, the SSH endpoint, the HTTP API, together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import structlog
from aiohttp import web

from relay.api.app import make_app
from relay.api.oauth import install_oauth
from relay.cli import STALE_PRESENCE_INTERVALS
from relay.config import RelayConfig
from relay.console.client import loopback_base
from relay.console.web import setup_console
from relay.hub import AgentHub
from relay.keys import fingerprint, load_or_create_host_key
from relay.localfwd import start_local_forward
from relay.metrics import RelayMetrics
from relay.oauth.service import OAuthService
from relay.registry import Registry, SecretBox
from relay.routing.executor import HttpExecutor
from relay.sshd import SSHEndpoint
from relay.wstunnel import setup_tunnel_route
from shared.logging import configure_logging
from shared.net import parse_host_port
from shared.version import __version__

log = structlog.get_logger("relay.server")

# How often offline connections are tested again in the background.
DEFAULT_REPING_INTERVAL_S = 60.0


async def serve(config: RelayConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully:
    stop accepting, drain open streams within ``shutdown_timeout_s``, close."""
    configure_logging(config.log.level, config.log.format)
    # Alembic narrates every migration step at INFO; operators need only problems.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    secrets = SecretBox.load_or_create(config.path(config.secrets_key_file))
    registry = await Registry.open(
        config.database_url,
        base_dir=config.base_dir,
        stale_session_after_s=STALE_PRESENCE_INTERVALS * config.ssh.presence_interval_s,
        secrets=secrets,
    )
    oauth: OAuthService | None = None
    try:
        await registry.upgrade()
        host_key = load_or_create_host_key(config.path(config.ssh.host_key_file))
        ssh = config.ssh
        hub = AgentHub(
            metrics=RelayMetrics(),
            open_timeout=ssh.stream_open_timeout_s,
            window=ssh.window,
            max_pktsize=ssh.max_pktsize,
            max_channels_per_session=ssh.max_channels_per_session,
        )
        endpoint = SSHEndpoint(
            registry=registry,
            hub=hub,
            host_key=host_key,
            node_id=config.node_id,
            login_timeout=ssh.login_timeout_s,
            keepalive_interval=ssh.keepalive_interval_s,
            keepalive_count_max=ssh.keepalive_count_max,
            max_sessions_per_agent=ssh.max_sessions_per_agent,
            auth_failures_per_minute=ssh.auth_failures_per_minute,
            token_recheck_interval=ssh.token_recheck_interval_s,
            presence_interval=ssh.presence_interval_s,
            min_agent_version=config.min_agent_version,
        )
        ssh_host, ssh_port = parse_host_port(ssh.listen)
        ssh_ready = {"listening": False}
        bound_ssh = await endpoint.start(ssh_host, ssh_port)
        ssh_ready["listening"] = True

        # OAuth 2.0: the executor's auth step for oauth2 connections, and the state
        # changes it records (logged, counted, signalled) go through ``oauth.states``.
        oauth = OAuthService(registry, config=config, metrics=hub.metrics)
        executor = HttpExecutor(
            hub=hub,
            registry=oauth.states,
            deny_private_networks=config.cloud.deny_private_networks,
            metrics=hub.metrics,
            auth_steps=oauth.auth_steps(),
        )
        app = make_app(
            hub,
            registry,
            ssh_ready,
            secrets=secrets,
            config=config,
            executor=executor,
            host_key=fingerprint(host_key),
            reping_interval_s=DEFAULT_REPING_INTERVAL_S,
        )
        install_oauth(app, oauth)
        console = None
        if config.http.console:
            console = setup_console(app, secrets.derive_key("onprem-console-session"))
        # Agents in networks that allow only HTTPS out reach SSH through /v1/tunnel.
        setup_tunnel_route(app, endpoint)
        # The app closes the executor and stops its re-test loop on cleanup.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        http_host, http_port = parse_host_port(config.http.listen)
        site = web.TCPSite(runner, http_host, http_port, backlog=1024)
        await site.start()
        bound_http = http_port
        if isinstance(site._server, asyncio.Server) and site._server.sockets:
            bound_http = site._server.sockets[0].getsockname()[1]
        if console is not None:
            console.api.base_url = loopback_base(http_host, bound_http)

        forwards = []
        forward_ports = []
        for fwd in config.local_forwards:
            srv = await start_local_forward(hub, fwd.listen, fwd.agent_id, fwd.target)
            forwards.append(srv)
            forward_ports.append(srv.sockets[0].getsockname()[1])

        log.info(
            "relay_listening",
            version=__version__,
            ssh_port=bound_ssh,
            http_port=bound_http,
            local_forward_ports=forward_ports,
            host_key=fingerprint(host_key),
            node_id=config.node_id,
        )
        if console is not None and not await registry.list_accounts():
            # First run: whoever starts the relay reads this and opens the link.
            code = console.first_run.start()
            log.warning(
                "console_setup",
                message="no account yet: open setup_url to create the first one",
                setup_url=f"{config.http.public_url.rstrip('/')}/console/setup/{code}",
            )
        await stop.wait()
        log.info("relay_stopping", streams_open=hub.streams_open)
        endpoint.stop_accepting()
        ssh_ready["listening"] = False
        for srv in forwards:
            srv.close()
        await hub.close(config.shutdown_timeout_s)
        await endpoint.close()
        await runner.cleanup()
        log.info("relay_stopped")
    finally:
        if oauth is not None:
            await oauth.aclose()
        await registry.close()
