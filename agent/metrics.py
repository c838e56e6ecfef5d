"""The agent's Prometheus metrics (names from design section 7), one registry per agent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connected = Gauge(
            "onprem_agent_connected", "Live SSH sessions to the relay", registry=r
        )
        self.reconnects_total = Counter(
            "onprem_agent_reconnects", "Reconnection attempts to the relay", registry=r
        )
        self.streams_total = Counter(
            "onprem_agent_streams", "Streams by result", ["result"], registry=r
        )
        self.streams_open = Gauge("onprem_agent_streams_open", "Streams open now", registry=r)
        self.bytes_total = Counter(
            "onprem_agent_bytes",
            "Bytes spliced (in: relay to target, out: target to relay)",
            ["direction"],
            registry=r,
        )
