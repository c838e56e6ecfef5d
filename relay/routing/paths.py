"""Reading a value out of a response body by path: dotted JSON paths for JSON bodies,
a small XPath subset for XML bodies. Pure functions, no I/O.

JSON: ``errors.0.code`` (list items by index); a leading ``$.`` and ``[0]`` brackets
are accepted too (``$.errors[0].code``). A path always names one value.

XML: ``xml.etree.ElementTree``'s XPath subset (``a/b``, ``//b``, ``*``, ``[@k]``,
``[@k='v']``, ``[tag='text']``, ``[n]``) plus the forms its ``find`` lacks and error
paths commonly use: an absolute ``/root/child`` (the first step must name the root),
a trailing ``/text()`` and a trailing ``/@attr``. Names match by local name (namespace
prefixes and ``{uri}`` parts are ignored), which is what people mean when they write a
path against a document with a default namespace. lxml would give full XPath 1.0, but
not a value this subset lacks for picking one field, and it brings a C dependency and
entity-resolution defaults to audit; ElementTree never fetches external entities and
the expat it uses bounds entity expansion.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

_BRACKET = re.compile(r"\[(\d+)\]")


class PathError(ValueError):
    """The path itself is malformed (not: the value is absent)."""


def _json_steps(path: str) -> list[str]:
    p = path.strip()
    if p.startswith("$"):
        p = p[1:].lstrip(".")
    p = _BRACKET.sub(r".\1", p)
    steps = p.split(".")
    if not p or any(s == "" for s in steps):
        raise PathError(f"bad JSON path {path!r}")
    return steps


def json_find(doc: Any, path: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``path`` names a value in ``doc``, else ``(False, None)``."""
    cur = doc
    for step in _json_steps(path):
        if isinstance(cur, dict):
            if step not in cur:
                return False, None
            cur = cur[step]
        elif isinstance(cur, list) and step.lstrip("-").isdigit():
            i = int(step)
            if not -len(cur) <= i < len(cur):
                return False, None
            cur = cur[i]
        else:
            return False, None
    return True, cur


def json_scalar_text(value: Any) -> str:
    """How a JSON value compares with configured ``*_values`` strings: strings as they
    are, numbers and literals as JSON writes them (``true``, ``null``, ``401``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_values(doc: Any, path: str) -> list[str]:
    """The value at ``path`` as comparison strings; a list of scalars gives one string
    per item (so ``errors.codes`` matches when any code matches). Absent: ``[]``."""
    found, value = json_find(doc, path)
    if not found:
        return []
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return [json_scalar_text(v) for v in value]
    return [json_scalar_text(value)]


# -- XML --------------------------------------------------------------------------

_XPATH_TAIL = re.compile(r"/(?:(text)\(\)|@([A-Za-z_][\w.\-]*(?::[\w.\-]+)?))$")
_PREFIXED_NAME = re.compile(r"(?<![\w.\-@'\"{])([A-Za-z_][\w.\-]*):(?=[A-Za-z_*])")


def parse_xml(text: str | bytes) -> ET.Element:
    """Parse and strip namespaces so paths match by local name."""
    root = ET.fromstring(text)  # noqa: S314 - no external entities; expat bounds expansion
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
        if any("}" in k for k in el.attrib):
            el.attrib = {k.rsplit("}", 1)[-1]: v for k, v in el.attrib.items()}
    return root


def _local(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def xml_values(root: ET.Element, path: str) -> list[str]:
    """Texts (stripped) or attribute values of every node ``path`` selects."""
    p = path.strip()
    if not p:
        raise PathError("empty XPath")
    want_attr: str | None = None
    m = _XPATH_TAIL.search(p)
    if m:
        p = p[: m.start()]
        if m.group(2):
            want_attr = _local(m.group(2))
    p = _PREFIXED_NAME.sub("", p)  # ns:tag -> tag (namespaces were stripped)
    if p.startswith("//"):
        expr = "." + p
    elif p.startswith("/"):
        first, _, rest = p[1:].partition("/")
        if "[" in first:
            raise PathError(f"unsupported XPath {path!r}: no predicates on the root step")
        if first not in ("*", root.tag):
            return []
        expr = "./" + rest if rest else "."
    elif p in ("", "."):
        expr = "."
    else:
        expr = "./" + p if not p.startswith(".") else p
    try:
        nodes = [root] if expr == "." else root.findall(expr)
    except SyntaxError as exc:
        raise PathError(f"unsupported XPath {path!r}: {exc}") from None
    out: list[str] = []
    for node in nodes:
        if want_attr is not None:
            if want_attr in node.attrib:
                out.append(node.attrib[want_attr])
        else:
            out.append("".join(node.itertext()).strip())
    return out


def body_values(body: Any, path: str) -> list[str]:
    """Comparison strings at ``path`` in a parsed body: a JSON value, an XML element,
    or ``None``/text (nothing to look in)."""
    if isinstance(body, ET.Element):
        return xml_values(body, path)
    if body is None or isinstance(body, str | bytes):
        return []
    return json_values(body, path)


__all__ = [
    "PathError",
    "body_values",
    "json_find",
    "json_scalar_text",
    "json_values",
    "parse_xml",
    "xml_values",
]
