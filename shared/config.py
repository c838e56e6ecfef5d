"""Load a YAML config file into a pydantic model, with env-var overrides.

Every failure becomes one ``ConfigError`` whose message names the file, the key and,
where the YAML parser or the document tree knows it, the line: never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration is missing, unreadable or invalid."""


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, values are not coerced loosely."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or its deepest existing parent)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    cur = data
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[path[-1]] = value


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``PREFIX_SSH__LISTEN=...`` -> ``{"ssh": {"listen": ...}}``.

    Scalars stay strings: the model's validation parses them for the field's type
    (``3``, ``true``, ``1.5``), so a token or id that looks like a number, a bool, a
    date or ``null`` is not mangled on its way to a string field. Flow-style ``[...]``
    and ``{...}`` values are parsed as YAML (lists and mappings)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(prefix) or name == prefix.rstrip("_") + "_CONFIG":
            continue
        path = name[len(prefix) :].lower().split("__")
        if not all(path):
            continue
        value: Any = raw
        if raw.strip().startswith(("{", "[")):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        _set_path(out, path, value)
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(exc: ValidationError, source: str, root: yaml.Node | None) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line is not None else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{where}: {key}: {msg}")
    return "; ".join(problems)


def load_config(
    model: type[M],
    path: str | os.PathLike[str],
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Read ``path`` (YAML), apply env overrides then ``overrides``, validate with ``model``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML error: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: expected a mapping of keys at the top level")
    if env_prefix:
        data = _merge(data, env_overrides(env_prefix, environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root)) from None
