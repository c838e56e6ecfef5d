"""The TLS client context of a connection: system trust plus ``ca_pem``, or no
verification with ``disable_strict_ssl``, and the client certificate when one is set."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator

from relay.models.connection import HttpSettings


class TlsConfigError(ValueError):
    """The connection's TLS material is unusable (bad PEM, key not matching)."""


def build_ssl_context(http: HttpSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if http.disable_strict_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif http.ca_pem:
        try:
            ctx.load_verify_locations(cadata=http.ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(f"ca_pem is not a usable PEM certificate: {exc}") from None
    cert = http.client_certificate
    if cert is not None:
        pem = cert.cert_pem if cert.cert_pem.endswith("\n") else cert.cert_pem + "\n"
        key = cert.key_pem or None
        try:
            with _pem_file(pem) as cert_path, _pem_file(key) as key_path:
                assert cert_path is not None
                ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TlsConfigError(f"client_certificate is not usable: {exc}") from None
    return ctx


def _no_password() -> str:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    raise ValueError("encrypted private keys are not supported")


@contextlib.contextmanager
def _pem_file(pem: str | None) -> Iterator[str | None]:
    """A path OpenSSL can read ``pem`` from, gone when the block ends.
    ``load_cert_chain`` reads files only. Linux: an anonymous memory file
    (``memfd_create``) opened through /proc, so the key never touches a disk.
    Elsewhere: a 0600 file in a private 0700 directory, removed right away."""
    if pem is None:
        yield None
        return
    data = pem.encode()
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("onprem-relay-pem", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="onprem-relay-") as d:
        path = os.path.join(d, "material.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            yield path
        finally:
            os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
