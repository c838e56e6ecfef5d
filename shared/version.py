"""The product version, reported by both CLIs and sent in the SSH version banner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onprem-relay")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"


def parse_version(text: str) -> tuple[int, ...] | None:
    """``0.1.0``, ``onprem-agent_0.1.0`` or ``0.2.0+src`` -> (0, 1, 0); None if there
    is no dotted number (a stock OpenSSH client, say)."""
    tail = text.rsplit("_", 1)[-1].split("+", 1)[0].split("-", 1)[0]
    parts = tail.split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def is_outdated(agent_version: str | None, minimum: str | None) -> bool:
    """True when both are known and the agent's version is below the minimum."""
    if not agent_version or not minimum:
        return False
    have, want = parse_version(agent_version), parse_version(minimum)
    return have is not None and want is not None and have < want
