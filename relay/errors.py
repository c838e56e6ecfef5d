"""The relay's exception tree.

RelayError
 +-- StreamError (ConnectionError)          opening a stream through an agent failed
 |    +-- AgentOfflineError                 no live session for the agent
 |    +-- TargetNotAllowedError             the agent's allowlist refused (SOCKS 0x02)
 |    +-- TargetUnreachableError            network/host unreachable, DNS (0x03, 0x04)
 |    +-- TargetRefusedError (ConnectionRefusedError)             (0x05)
 |    +-- StreamTimeoutError (TimeoutError) the agent or the target timed out (0x06)
 |    +-- AgentProtocolError                the agent answered garbage (peer misbehaved)
 +-- UpstreamError                           executing an HTTP request for a connection failed
 |    (``code`` is one of the design's error codes; StreamError codes are reused)
 +-- RegistryError
      +-- NotFoundError (LookupError)
      +-- ConflictError
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class StreamError(RelayError, ConnectionError):
    code = "stream_failed"


class AgentOfflineError(StreamError):
    code = "agent_offline"


class TargetNotAllowedError(StreamError):
    code = "target_not_allowed"


class TargetUnreachableError(StreamError):
    code = "target_unreachable"


class TargetRefusedError(StreamError, ConnectionRefusedError):
    code = "connection_refused"


class StreamTimeoutError(StreamError, TimeoutError):
    code = "timeout"


class AgentProtocolError(StreamError):
    code = "agent_protocol_error"


class UpstreamError(RelayError):
    """An HTTP request for a connection failed; ``code`` is a design error code
    (``blocked_destination``, ``tls_error``, ``auth_failed``, ``needs_authorization``,
    ``ping_failed``, ``rate_limited``, ``timeout``, ...)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status  # the upstream HTTP status, when there was one


class RegistryError(RelayError):
    """A registry operation could not be done."""


class NotFoundError(RegistryError, LookupError):
    pass


class ConflictError(RegistryError):
    pass
