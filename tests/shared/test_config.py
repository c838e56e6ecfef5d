"""``load_config``: YAML file < env < overrides, and one clear error per bad input."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from shared.config import ConfigError, StrictModel, env_overrides, load_config


class Inner(StrictModel):
    listen: str = "0.0.0.0:2222"
    window: int = 1024
    enabled: bool = False


class Log(StrictModel):
    level: Literal["debug", "info"] = "info"


class Model(StrictModel):
    name: str = "default"
    count: int = Field(1, ge=1)
    ratio: float = 0.5
    tags: list[str] = []
    ssh: Inner = Inner()
    log: Log = Log()
    secret: str | None = None


Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def _write(text: str, name: str = "conf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


def test_valid_file(write: Write) -> None:
    path = write(
        """
        name: relay-1
        count: 3
        tags: [a, b]
        ssh:
          listen: 127.0.0.1:2200
          enabled: true
        """
    )
    cfg = load_config(Model, path, environ={})
    assert cfg.name == "relay-1"
    assert cfg.count == 3
    assert cfg.tags == ["a", "b"]
    assert cfg.ssh == Inner(listen="127.0.0.1:2200", enabled=True)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(write: Write, text: str) -> None:
    assert load_config(Model, write(text), environ={}) == Model()


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(Model, path)
    assert str(info.value) == f"{path}: file not found"


def test_unreadable_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Model, tmp_path)  # a directory
    assert str(info.value).startswith(f"{tmp_path}: cannot read")


def test_unknown_key_names_file_key_and_line(write: Write) -> None:
    path = write(
        """
        name: x
        ssh:
          listen: 127.0.0.1:1
          windwo: 5
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    assert str(info.value) == f"{path}:4: ssh.windwo: unknown key"


def test_wrong_type_names_file_key_and_line(write: Write) -> None:
    path = write(
        """
        name: x
        count: many
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}:2: count: ")
    assert "integer" in message


def test_every_bad_key_is_named(write: Write) -> None:
    path = write(
        """
        count: 0
        tags:
          - ok
          - [nested]
        log: {level: loud}
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    message = str(info.value)
    assert f"{path}:1: count: " in message
    assert f"{path}:4: tags.1: " in message
    assert f"{path}:5: log.level: " in message


def test_yaml_syntax_error_names_file_and_line(write: Write) -> None:
    path = write(
        """
        name: x
        ssh:
          listen: "unterminated
        count: 2
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}:")
    assert "YAML error" in message
    line = int(message[len(str(path)) + 1 :].split(":", 1)[0])
    assert line in (3, 4, 5)  # where the scanner noticed it


def test_bad_indentation_names_its_line(write: Write) -> None:
    path = write("name: x\n  count: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    assert str(info.value).startswith(f"{path}:2: YAML error: ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(write: Write, text: str) -> None:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    assert str(info.value) == f"{path}:1: expected a mapping of keys at the top level"


def test_error_is_one_line_without_traceback_text(write: Write) -> None:
    path = write("count: x\nratio: y\n")
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, environ={})
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- env overrides ------------------------------------------------------------------


def test_env_overrides_nested_keys() -> None:
    env = {
        "APP_COUNT": "4",
        "APP_SSH__ENABLED": "true",
        "APP_SSH__WINDOW": "65536",
        "APP_TAGS": "[x, y]",
        "APP_LOG": "{level: debug}",
        "APP_CONFIG": "/ignored.yaml",  # the config path itself is not a key
        "OTHER_COUNT": "9",
    }
    # Scalars stay text until the model parses them for the field's type.
    assert env_overrides("APP_", env) == {
        "count": "4",
        "ssh": {"enabled": "true", "window": "65536"},
        "tags": ["x", "y"],
        "log": {"level": "debug"},
    }


def test_env_values_are_parsed_for_the_field_type(write: Write) -> None:
    env = {
        "APP_COUNT": "4",
        "APP_RATIO": "0.25",
        "APP_SSH__ENABLED": "true",
        "APP_SSH__WINDOW": "65536",
        "APP_TAGS": "[x, y]",
        "APP_LOG": "{level: debug}",
    }
    cfg = load_config(Model, write("name: x\n"), env_prefix="APP_", environ=env)
    assert (cfg.count, cfg.ratio, cfg.tags) == (4, 0.25, ["x", "y"])
    assert cfg.ssh == Inner(enabled=True, window=65536)
    assert cfg.log.level == "debug"


def test_env_values_that_only_look_structured_stay_strings() -> None:
    env = {"APP_NAME": "a: b", "APP_SECRET": "- x", "APP_SSH__LISTEN": "*weird"}
    assert env_overrides("APP_", env) == {
        "name": "a: b",
        "secret": "- x",
        "ssh": {"listen": "*weird"},
    }


def test_env_names_with_empty_parts_are_ignored() -> None:
    assert env_overrides("APP_", {"APP_SSH____X": "1", "APP_": "2", "APP___X": "3"}) == {}


def test_precedence_file_then_env_then_overrides(write: Write) -> None:
    path = write(
        """
        name: from-file
        count: 2
        ratio: 0.1
        ssh: {listen: "file:1", window: 10}
        """
    )
    env = {"APP_COUNT": "3", "APP_NAME": "from-env", "APP_SSH__WINDOW": "20"}
    cfg = load_config(Model, path, env_prefix="APP_", environ=env, overrides={"name": "from-flag"})
    assert cfg.name == "from-flag"  # overrides beat env
    assert cfg.count == 3  # env beats file
    assert cfg.ratio == 0.1  # file beats defaults
    # Nested env keys merge into the file's mapping instead of replacing it.
    assert cfg.ssh == Inner(listen="file:1", window=20)


def test_env_is_not_read_without_a_prefix(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_COUNT", "7")
    assert load_config(Model, write("count: 2\n")).count == 2
    assert load_config(Model, write("count: 2\n"), env_prefix="APP_").count == 7


def test_bad_env_value_is_named(write: Write) -> None:
    path = write("name: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, env_prefix="APP_", environ={"APP_COUNT": "lots"})
    assert "count:" in str(info.value)


def test_unknown_env_key_is_an_error(write: Write) -> None:
    path = write("name: x\n")
    with pytest.raises(ConfigError, match="colour: unknown key"):
        load_config(Model, path, env_prefix="APP_", environ={"APP_COLOUR": "red"})


@pytest.mark.parametrize("raw", ["123456", "0600", "true", "null", "2024-01-01", "1_000", "~"])
def test_env_value_for_a_string_key_stays_that_string(write: Write, raw: str) -> None:
    # A token or password that happens to look like a number, bool, date or null.
    path = write("name: x\n")
    cfg = load_config(Model, path, env_prefix="APP_", environ={"APP_SECRET": raw})
    assert cfg.secret == raw
