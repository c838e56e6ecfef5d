"""The on-premise agent: holds a reverse SSH tunnel to the relay."""
