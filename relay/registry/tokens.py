"""Prefixed random ids, bearer tokens, and how tokens are stored (SHA-256) and compared.

Tokens carry >= 256 random bits, so a fast unsalted hash is enough to make a leaked
database useless for logging in; comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_RANDOM_LENGTH = 20

ACCOUNT_PREFIX = "acc_"
AGENT_PREFIX = "agt_"
AGENT_TOKEN_PREFIX = "oat_"
API_TOKEN_PREFIX = "oak_"
_TOKEN_BYTES = 32

# Compared against when the agent or account does not exist, so that a miss costs the
# same work as a hit with a wrong token.
DUMMY_HASH = hashlib.sha256(b"onprem-relay: no such token").hexdigest()


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_RANDOM_LENGTH))


def new_agent_token() -> str:
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
