"""The relay's Prometheus metrics (names from design section 7), one registry per
relay instance so tests and several relays in one process do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.agents_connected = Gauge(
            "onprem_relay_agents_connected", "Agents with at least one live session", registry=r
        )
        self.agent_sessions = Gauge(
            "onprem_relay_agent_sessions", "Live agent SSH sessions", registry=r
        )
        self.streams_open = Gauge(
            "onprem_relay_streams_open", "Streams open through agents", registry=r
        )
        self.stream_open_seconds = Histogram(
            "onprem_relay_stream_open_seconds",
            "Time to open a stream through an agent (channel + SOCKS reply)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.auth_failures = Counter(
            "onprem_relay_auth_failures", "Failed agent authentications", registry=r
        )
        self.requests_total = Counter(
            "onprem_relay_requests", "HTTP requests executed", ["route", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "onprem_relay_request_seconds", "HTTP request duration", ["route"], registry=r
        )
        self.bytes_total = Counter(
            "onprem_relay_bytes", "Bytes through streams", ["direction"], registry=r
        )
        self.oauth_refresh_total = Counter(
            "onprem_relay_oauth_refresh", "OAuth token refreshes", ["result"], registry=r
        )
        self.connection_state_changes_total = Counter(
            "onprem_relay_connection_state_changes",
            "Connection state changes, by the state entered",
            ["state"],
            registry=r,
        )
