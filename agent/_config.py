"""The configuration file: /etc/sidetrace/sidetrace.toml, read with tomllib.

One table per command, holding that command's long options by their
command-line names without the dashes in front::

    [run]
    comm = ["nginx", "postgres"]
    payload-bytes = 1024
    service = ["shop=exe:/srv/shop/*"]

    [export.otlp]
    endpoint = "http://collector:4318"
    header = ["authorization=Bearer ..."]

Values go through the same checks as the command line (a number may be
written as a TOML number or a string); a repeatable option takes a list; a
flag takes true or false.  Options given on the command line override the
file; a repeatable option given there replaces the file's list.  A key or
table the commands do not have is an error naming it.  The file is optional
at its default place (``SIDETRACE_CONFIG`` or ``--config`` name another,
which must then exist).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["ConfigError", "DEFAULT_CONFIG_PATH", "apply_config", "apply_config_file", "command_path", "config_path",
           "load_config", "without_file_lists"]

DEFAULT_CONFIG_PATH = "/etc/sidetrace/sidetrace.toml"
ENV_VAR = "SIDETRACE_CONFIG"
# Options that make no sense in a file.
_NOT_IN_FILE = {"help", "config"}


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


def config_path(argv: Sequence[str]) -> tuple[str, bool]:
    """(path, whether it was asked for explicitly) from ``--config``, the environment, or the default."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1], True
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], True
        if not arg.startswith("-"):
            break  # the command: --config belongs before it
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_CONFIG_PATH, False


def command_path(argv: Sequence[str], commands: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The command words of ``argv`` (``("run",)``, ``("export", "otlp")``), skipping top-level options."""
    known = set(commands)
    words: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
            if tuple(words) in known:
                break
        elif words:
            break  # an option of a command group: not ours to read
    return tuple(words)


def apply_config_file(parsers: Mapping[tuple[str, ...], argparse.ArgumentParser],
                      argv: Sequence[str]) -> dict[str, list]:
    """Read the configuration file ``argv`` names (or the default) and apply it (see ``apply_config``)."""
    path, explicit = config_path(argv)
    return apply_config(parsers, load_config(path, explicit), command_path(argv, parsers), path)


def load_config(path: str, required: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such configuration file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name without dashes -> its action."""
    out = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        for option in action.option_strings:
            if option.startswith("--") and action.dest not in _NOT_IN_FILE:
                out[option[2:]] = action
    return out


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a single value, got {type(value).__name__}")
    text = value if isinstance(value, str) else repr(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {converted!r} is not one of {choices}")
    return converted


def _value(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value  # noqa: SLF001
    if isinstance(action, argparse._AppendAction):  # noqa: SLF001
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, item, f"{where}[{i}]") for i, item in enumerate(items)]
    return _scalar(action, value, where)


def apply_config(parsers: Mapping[tuple[str, ...], argparse.ArgumentParser], config: Mapping[str, Any],
                 command: tuple[str, ...], path: str) -> dict[str, list]:
    """Check the whole file, then make ``command``'s table the defaults of its parser.

    Returns dest -> the list the file gave, for each repeatable option of
    ``command`` (``without_file_lists`` needs it after parsing).
    """
    tables = _tables(config, parsers, path)
    lists: dict[str, list] = {}
    for words, table in tables.items():
        parser = parsers[words]
        options = _options(parser)
        defaults = {}
        for key, value in table.items():
            where = f"{path}: [{'.'.join(words)}] {key}"
            action = options.get(key)
            if action is None:
                hint = key.replace("_", "-")
                suggestion = f" (did you mean {hint!r}?)" if hint in options else ""
                raise ConfigError(f"{where}: unknown key{suggestion}")
            defaults[action.dest] = _value(action, value, where)
            if words == command:
                action.required = False  # the file gives it
                if isinstance(action, argparse._AppendAction):  # noqa: SLF001
                    lists[action.dest] = defaults[action.dest]
        if words == command:
            parser.set_defaults(**defaults)
    return lists


def _tables(config: Mapping[str, Any], parsers: Mapping[tuple[str, ...], argparse.ArgumentParser],
            path: str) -> dict[tuple[str, ...], Mapping[str, Any]]:
    """Command words -> its table, for every table in the file; unknown tables are errors."""
    out: dict[tuple[str, ...], Mapping[str, Any]] = {}

    def walk(table: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in table.items():
            words = prefix + (key,)
            is_group = any(w[:len(words)] == words and len(w) > len(words) for w in parsers)
            if (words in parsers or is_group) and not isinstance(value, Mapping):
                raise ConfigError(f"{path}: {'.'.join(words)} must be a table ([{'.'.join(words)}])")
            if words in parsers:
                out[words] = value
            elif is_group:
                walk(value, words)
            elif prefix:
                raise ConfigError(f"{path}: [{'.'.join(prefix)}] {key}: unknown key")
            else:
                tables = ", ".join("[" + ".".join(w) + "]" for w in parsers)
                raise ConfigError(f"{path}: {key}: unknown key (the file holds one table per command: {tables})")

    walk(config, ())
    return out


def without_file_lists(args: argparse.Namespace, lists: Mapping[str, list]) -> None:
    """A repeatable option given on the command line replaces the file's list.

    argparse appends command-line values to the default list, so the file's
    items come first; when more than those are there, the command line gave some.
    """
    for dest, file_items in lists.items():
        value = getattr(args, dest, None)
        if isinstance(value, list) and len(value) > len(file_items):
            setattr(args, dest, value[len(file_items):])
