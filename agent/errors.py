"""The agent's exception tree.

AgentError
 +-- FatalError            the agent must stop: exit non-zero with one clear line
 |    +-- AuthRejectedError        the relay refused our token
 |    +-- HostKeyMismatchError     the relay's host key is not the pinned one
 +-- TransportError (OSError)      the relay could not be reached (retry)
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class FatalError(AgentError):
    exit_code = 1


class AuthRejectedError(FatalError):
    exit_code = 3


class HostKeyMismatchError(FatalError):
    exit_code = 4


class TransportError(AgentError, OSError):
    pass
