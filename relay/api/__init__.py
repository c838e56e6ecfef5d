"""The relay's HTTP API (aiohttp)."""
