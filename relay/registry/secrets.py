"""Encryption of secrets at rest (client secrets, passwords, OAuth tokens) with one
Fernet key kept in ``secrets_key_file``."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.errors import RegistryError
from relay.keys import create_private_file
from shared.config import ConfigError


class SecretDecryptError(RegistryError, ValueError):
    """A stored secret cannot be decrypted: wrong secrets key or corrupted value."""


class SecretBox:
    """Authenticated symmetric encryption (Fernet: AES-128-CBC + HMAC-SHA256) of strings."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key

    def derive_key(self, purpose: str) -> bytes:
        """A Fernet key for another use (``purpose`` names it), derived from this key
        with HKDF-SHA256: stable across restarts and relay processes sharing the
        secrets key, and useless for decrypting stored secrets."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return base64.urlsafe_b64encode(hkdf.derive(base64.urlsafe_b64decode(self._key)))

    @classmethod
    def generate_key(cls) -> bytes:
        return Fernet.generate_key()

    @classmethod
    def load_or_create(cls, path: str | Path) -> SecretBox:
        """Read the key at ``path``; create it (mode 0600, atomically) if missing.

        An existing file is never replaced: doing so would make every stored secret
        unreadable. A bad file raises ``ConfigError`` naming it.
        """
        p = Path(path)
        if not p.exists():
            create_private_file(p, cls.generate_key() + b"\n")
        try:
            key = p.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read secrets key: {exc.strerror or exc}") from None
        try:
            return cls(key)
        except ValueError:
            raise ConfigError(
                f"{p}: not a valid secrets key (expected 32 url-safe base64-encoded bytes)"
            ) from None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretDecryptError(
                "cannot decrypt a stored secret: wrong secrets key or corrupted value"
            ) from None
