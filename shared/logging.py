"""Logging for both sides: structlog, one JSON event per line (or console), secrets redacted.

Records from the stdlib ``logging`` module (asyncssh, aiohttp, ...) go through the same
processors, redaction included, and out of the same handler.

What ``redact`` removes, replaced by ``"********"``:

- the value of any key named in ``SENSITIVE_KEYS`` (any case, ``-`` or ``_``), or
  ending in one of ``SENSITIVE_SUFFIXES`` (``X-Api-Key``, ``db_password``), at any
  depth of dicts, lists and tuples, and the ``value`` of ``{"name": KEY, "value": ...}``
  header pairs;
- ``code`` (a string) only inside a nested mapping that looks like OAuth parameters
  (it also holds ``state``, ``redirect_uri``, ``grant_type``, ``code_verifier``,
  ``client_id`` or ``session_state``), or in a URL query (``?code=``): at the top
  of an event, in free text and as a number, ``code`` is an error or status code
  and stays. ``state`` always stays (at the top it is the connection state);
- inside any string (messages, exception text, values, reprs): ``Bearer``
  credentials, ``Basic`` credentials, ``KEY=value`` / ``KEY: value`` pairs for the
  keys above (query strings, headers, dict reprs, JSON), URL passwords
  (``http://user:********@proxy:3128``), our token shapes (``oat_``/``oak_`` + 43
  characters), JWTs and PEM private keys.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "LEVELS",
    "REDACTED",
    "SENSITIVE_KEYS",
    "SENSITIVE_SUFFIXES",
    "configure_logging",
    "get_logger",
    "is_sensitive_key",
    "redact",
    "redact_text",
    "redact_value",
]

REDACTED: Final = "********"

# Normalized: lower case, "-" -> "_".
SENSITIVE_KEYS: Final = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_token",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "secret_key",
        "api_key",
        "apikey",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "private_key",
        "credentials",
        "code_verifier",
        "authorization_code",
    }
)
SENSITIVE_SUFFIXES: Final = (
    "_token",
    "_password",
    "_passwd",
    "_secret",
    "_secret_key",
    "_api_key",
    "_apikey",
    "_private_key",
    "_credentials",
)
# A mapping with one of these next to "code" holds OAuth parameters.
_OAUTH_MARKERS: Final = frozenset(
    {"state", "redirect_uri", "grant_type", "code_verifier", "client_id", "session_state"}
)

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Libraries that chat at INFO about every packet or channel.
_DEFAULT_LIBRARY_LEVELS: Final = {"asyncssh": "warning"}
_MAX_DEPTH = 32
# structlog's own keys: exc_info is turned into text (then redacted) by format_exc_info.
_PASS_THROUGH: Final = frozenset({"exc_info", "_record", "_from_structlog"})


def _normalize_key(key: object) -> str:
    return str(key).lower().replace("-", "_")


def is_sensitive_key(key: object) -> bool:
    """True if a value stored under ``key`` is a secret (``code`` excepted: see module doc)."""
    norm = _normalize_key(key)
    return norm in SENSITIVE_KEYS or norm.endswith(SENSITIVE_SUFFIXES)


# --- text patterns ---------------------------------------------------------------

_KEY_WORDS = (
    r"(?:access|refresh|id|api)?[-_]?token|password|passwd|passphrase|secret(?:[-_]?key)?"
    r"|api[-_]?key|authorization|cookie|private[-_]?key|credentials|code[-_]verifier"
)
# KEY (optionally quoted, optionally with a prefix like "X-" or "client_") then = or :
_KEY_VALUE = re.compile(
    r"""(?P<key>(?<![\w-])["']?(?:[\w-]*[-_])?(?:"""
    + _KEY_WORDS
    + r"""|(?<=[?&#])code)["']?\s*[:=]\s*)"""
    r"""(?P<scheme>(?:bearer|basic|digest|negotiate|token)\s+)?"""
    r"""(?P<value>"(?:[^"\\]|\\.){0,8192}"|'(?:[^'\\]|\\.){0,8192}'|[^\s&,;'"{}\[\]()<>]+)""",
    re.IGNORECASE,
)
# Cookie headers carry "a=b; c=d": redact to the end of the line.
_COOKIE_LINE = re.compile(r"(?P<key>(?<![\w-])(?:set-)?cookie\s*:\s*)(?P<value>[^\r\n]+)", re.I)
_CODE_AT_START = re.compile(r"^(?P<key>code=)(?P<value>[^&\s#]+)(?=&)")
_BEARER = re.compile(r"(?P<scheme>\bbearer\s+)(?P<value>[A-Za-z0-9\-._~+/]+=*)", re.I)
_BASIC = re.compile(r"(?P<scheme>\bbasic\s+)(?P<value>[A-Za-z0-9+/]{4,}={0,2})", re.I)
_URL_USERINFO = re.compile(
    r"(?P<prefix>\b[a-z][a-z0-9+.-]{0,31}://[^:/?#@\s]*:)(?P<value>[^/?#\s]*)@", re.IGNORECASE
)
_OUR_TOKEN = re.compile(r"\bo(?:at|ak)_[A-Za-z0-9_-]{43}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)


# Every pattern above contains one of these (case-insensitively).
_MAYBE_SECRET = re.compile(
    r"bearer|basic|token|passw|passphrase|secret|api[-_]?key|authoriz|cookie|credential"
    r"|code|oa[tk]_|eyJ|://|PRIVATE KEY",
    re.IGNORECASE,
)


def _is_basic_credential(value: str) -> bool:
    # "basic" is also an English word: only a base64 "user:pass" counts.
    try:
        return b":" in base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False


def _sub_key_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in "\"'" and len(value) >= 2 else ""
    return match.group("key") + (match.group("scheme") or "") + quote + REDACTED + quote


def _sub_bearer(match: re.Match[str]) -> str:
    # Outside an Authorization header "bearer" may be English ("missing bearer
    # token"): a credential is long, or has a digit or punctuation in it.
    value = match.group("value")
    if len(value) >= 20 or not value.isalpha():
        return match.group("scheme") + REDACTED
    return match.group(0)


def _sub_basic(match: re.Match[str]) -> str:
    if _is_basic_credential(match.group("value")):
        return match.group("scheme") + REDACTED
    return match.group(0)


def redact_text(text: str) -> str:
    """``text`` with every secret-shaped part replaced by ``"********"``."""
    if not _MAYBE_SECRET.search(text):
        return text  # the common case: one scan instead of one per pattern
    text = _PEM_KEY.sub(REDACTED, text)
    text = _OUR_TOKEN.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    text = _URL_USERINFO.sub(lambda m: m.group("prefix") + REDACTED + "@", text)
    text = _COOKIE_LINE.sub(lambda m: m.group("key") + REDACTED, text)
    text = _KEY_VALUE.sub(_sub_key_value, text)
    text = _CODE_AT_START.sub(lambda m: m.group("key") + REDACTED, text)
    text = _BEARER.sub(_sub_bearer, text)
    return _BASIC.sub(_sub_basic, text)


# --- structured values -----------------------------------------------------------


def _is_oauth_params(keys: set[str]) -> bool:
    return "code" in keys and not keys.isdisjoint(_OAUTH_MARKERS)


def _redact_mapping(mapping: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
    keys = {_normalize_key(k) for k in mapping}
    # The event itself (depth 0) has "state" = connection state and "code" = a result.
    oauth = depth > 0 and _is_oauth_params(keys)
    header_pair = "name" in keys and "value" in keys
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        norm = _normalize_key(key)
        if key in _PASS_THROUGH:
            out[key] = value
        elif value is not None and (
            is_sensitive_key(key)
            or (oauth and norm == "code" and isinstance(value, str))
            or (header_pair and norm == "value" and _pair_name_is_sensitive(mapping))
        ):
            out[key] = REDACTED
        else:
            out[key] = _redact(value, depth + 1)
    return out


def _pair_name_is_sensitive(mapping: Mapping[Any, Any]) -> bool:
    for key, value in mapping.items():
        if _normalize_key(key) == "name" and isinstance(value, str):
            return is_sensitive_key(value)
    return False


def _redact(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if depth > _MAX_DEPTH:
        return REDACTED  # too deep to inspect: drop rather than risk a leak
    if isinstance(value, Mapping):
        return _redact_mapping(value, depth)
    if isinstance(value, list | tuple | set | frozenset):
        # ("Authorization", "Bearer x") header pairs
        if (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], str)
            and is_sensitive_key(value[0])
            and value[1] is not None
        ):
            return (value[0], REDACTED)
        items = [_redact(item, depth + 1) for item in value]
        return items if isinstance(value, list | set | frozenset) else tuple(items)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")
        cleaned = redact_text(text)
        return value if cleaned == text else cleaned
    # Renderers fall back to repr() for other objects (exceptions, models, ...).
    text = repr(value)
    cleaned = redact_text(text)
    return value if cleaned == text else cleaned


def redact_value(value: Any) -> Any:
    """A copy of ``value`` with secrets replaced; for anything about to be logged."""
    return _redact(value, 0)


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: remove secrets from every key and value of the event.

    Runs after ``format_exc_info``, so exception text is plain text by then."""
    del logger, method_name
    return _redact_mapping(event_dict, 0)


# --- setup -----------------------------------------------------------------------


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler ``configure_logging`` installed, so a second call replaces it."""


def _level(name: str) -> int:
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {name!r}") from None


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    *,
    library_levels: Mapping[str, str] | None = None,
) -> None:
    """Send structlog and stdlib logging to ``stream`` (default stderr), redacted.

    ``fmt`` is ``json`` (one object per line: ``timestamp`` in ISO 8601 UTC, ``level``,
    ``event``, ``logger``, bound context) or ``console``. ``library_levels`` sets the
    least level for chatty libraries (default: asyncssh at warning); they never log
    below ``level``. Calling it again replaces the previous setup."""
    root_level = _level(level)
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be json or console, not {fmt!r}")
    out = stream if stream is not None else sys.stderr

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = bool(getattr(out, "isatty", lambda: False)())
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(root_level)
    levels = dict(_DEFAULT_LIBRARY_LEVELS)
    levels.update(library_levels or {})
    for name, lib_level in levels.items():
        logging.getLogger(name).setLevel(max(_level(lib_level), root_level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        context_class=dict,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Safe to cache: level, format and stream live in stdlib logging, which a
        # second call reconfigures; this processor chain never changes.
        cache_logger_on_first_use=True,
    )


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A logger named ``name`` (the ``logger`` field), with ``initial`` values bound."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
