"""Code shared by the agent and the relay: SOCKS5 codec, config loading, logging."""
