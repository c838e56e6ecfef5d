"""Executing HTTP requests for connections: cloud (direct, SSRF-guarded) or on-premise
(through an agent's tunnel), with auth, auth-error detection, rate limits, concurrency."""
