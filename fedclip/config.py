"""One config system: TOML tables -> frozen dataclasses, with CLI overrides under the same names.

`[pretrain] steps = 200` in a file and `--set pretrain.steps=200` on the command line address the
same field. Every run writes its resolved config (every default spelled out) to `config.toml`, so a
run can be repeated or resumed from its own directory.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from fedclip import io
from fedclip.errors import FedclipError

T = TypeVar("T")

SECTIONS = ("pretrain", "federate", "study", "policy")
"""The tables a fedclip TOML file may hold (one per command; `policy` is a hospital's own)."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "none":
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except FedclipError:
                continue
        raise FedclipError(f"{where}: {value!r} is not a valid {hint}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, where) for v in items if v != "")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is Path:
            return Path(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
    except (TypeError, ValueError):
        raise FedclipError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def build(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """A `cls` from a mapping; unknown keys and ill-typed values are errors naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FedclipError(f"[{section}] has no setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def load(cls: type[T], section: str, path: str | Path | None = None, overrides: Iterable[str] = (),
         **explicit: Any) -> T:
    """File table `[section]`, then `section.key=value` overrides, then explicit keyword values."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_section(path, section))
    for item in overrides:
        key, sep, value = item.partition("=")
        sect, _, name = key.partition(".")
        if not sep or not name:
            raise FedclipError(f"override {item!r} must look like {section}.name=value")
        if sect != section:
            raise FedclipError(f"override {item!r}: this command takes {section}.NAME=VALUE, not section {sect!r}")
        values[name] = value
    values.update({k: v for k, v in explicit.items() if v is not None})
    return build(cls, values, section)


def to_toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [to_toml_value(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {k: to_toml_value(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    return value


def write(path: str | Path, sections: Mapping[str, Any]) -> Path:
    """Write resolved configs as TOML (None values are left out: TOML has no null)."""
    doc = {name: {k: to_toml_value(v) for k, v in dataclasses.asdict(cfg).items() if v is not None}
           for name, cfg in sections.items()}
    return io.write_text(path, tomli_w.dumps(doc))


def read_section(path: str | Path, section: str) -> dict[str, Any]:
    """Table `[section]` of a fedclip TOML file (empty if absent); a missing or invalid file, or an unknown
    table in it, is an error naming the file."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FedclipError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise FedclipError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise FedclipError(f"config file {path} has unknown section(s) [{'], ['.join(unknown)}]; "
                           f"known: {', '.join(SECTIONS)}")
    return doc.get(section, {})
