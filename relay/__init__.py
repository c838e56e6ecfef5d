"""The cloud relay: SSH endpoint for agents, registry, REST API."""
