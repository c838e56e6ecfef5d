"""The relay's SSH host key on disk, and private files created once, atomically, 0600."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import asyncssh

from shared.config import ConfigError

HOST_KEY_ALGORITHM = "ssh-ed25519"


def create_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` and mode 0600 unless it already exists.

    The content is written to a temporary file first and then hard-linked into place,
    so a reader never sees a partial file and two processes racing to create it agree
    on one winner. Returns True if this call created the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not supported everywhere, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The host key at ``path``; a new Ed25519 key (OpenSSH format, 0600) if missing.

    An existing key is always kept: agents pin its fingerprint. An unreadable or
    corrupt file raises ``ConfigError`` naming the file instead of replacing it.
    """
    path = Path(path)
    if not path.exists():
        key = asyncssh.generate_private_key(HOST_KEY_ALGORITHM)
        if create_private_file(path, key.export_private_key("openssh")):
            pub = path.with_name(path.name + ".pub")
            with contextlib.suppress(OSError):
                key.write_public_key(str(pub))
            return key
        # Another process created it first: use theirs.
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read SSH host key: {exc.strerror or exc}") from None
    try:
        return asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a valid unencrypted SSH private key ({exc}); "
            "restore the original file (agents pin its fingerprint) or delete it to "
            "create a new one"
        ) from None


def fingerprint(key: asyncssh.SSHKey) -> str:
    """The OpenSSH ``SHA256:...`` fingerprint that agents pin (config ``relay.host_key``)."""
    return str(key.get_fingerprint("sha256"))
