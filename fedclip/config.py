"""One config system: TOML tables -> frozen dataclasses, with CLI overrides under the same names.

`[pretrain] steps = 200` in a file and `--set pretrain.steps=200` on the command line address the
same field. Every run writes its resolved config (every default spelled out) to `config.toml`, so a
run can be repeated or resumed from its own directory.
"""

from __future__ import annotations

import copy
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

SECTIONS = ("pretrain", "federate", "study", "policy", "generator", "generator_study")
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


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def build(cls: type[T], values: Mapping[str, Any], section: str, base: T | None = None) -> T:
    """A `cls` from a (nested) mapping, on top of `base` (default: `cls()`); a field that is itself a config
    (`FederateConfig.finetune`) is built from its sub-table on top of its own default. Unknown keys and
    ill-typed values are errors naming the dotted key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FedclipError(f"[{section}] has no setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    base = base if base is not None else cls()
    coerced: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{section}.{key}"
        if _is_config(hints[key]):
            if not isinstance(value, Mapping):
                raise FedclipError(f"{where} is a table of settings ([{where}] or {where}.NAME=VALUE), "
                                   f"not {value!r}")
            coerced[key] = build(hints[key], value, where, getattr(base, key))
        else:
            coerced[key] = _coerce(value, hints[key], where)
    return dataclasses.replace(base, **coerced)


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    for part in parents:
        child = values.setdefault(part, {})
        if not isinstance(child, dict):
            raise FedclipError(f"{dotted}: {part} is a setting, not a table")
        values = child
    values[name] = value


def load(cls: type[T], section: str, path: str | Path | None = None, overrides: Iterable[str] = (),
         **explicit: Any) -> T:
    """File table `[section]`, then `section.key=value` overrides (dotted for nested tables:
    `federate.finetune.epochs=3`), then explicit keyword values (`**{"finetune.task": t}` for nested ones;
    None: not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(copy.deepcopy(read_section(path, section)))
    for item in overrides:
        key, sep, value = item.partition("=")
        sect, _, name = key.partition(".")
        if not sep or not name:
            raise FedclipError(f"override {item!r} must look like {section}.name=value")
        if sect != section:
            raise FedclipError(f"override {item!r}: this command takes {section}.NAME=VALUE, not section {sect!r}")
        _set_dotted(values, name, value)
    for name, value in explicit.items():
        if value is not None:
            _set_dotted(values, name, value)
    return build(cls, values, section)


def plain(cfg: Any) -> dict[str, Any]:
    """A config as TOML-ready nested tables (paths as strings, tuples as lists, None left out)."""
    return {f.name: to_toml_value(v) for f in dataclasses.fields(cfg) if (v := getattr(cfg, f.name)) is not None}


def flatten(table: Mapping[str, Any]) -> dict[str, Any]:
    """Nested tables as one flat table with dotted keys (`finetune.epochs`): Flower's run-config form."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten` (dotted keys -> nested tables)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        _set_dotted(out, key, value)
    return out


def refuse_owned(cfg: Any, default: Any, owned: Mapping[str, str], section: str) -> None:
    """Settings that a wider config sets itself (a study sets each federation's data and ε) must keep
    their defaults: a value there would be silently overridden, so it is an error naming who sets it."""
    for dotted, owner in owned.items():
        value, base = cfg, default
        for part in dotted.split("."):
            value, base = getattr(value, part), getattr(base, part)
        if value != base:
            raise FedclipError(f"{section}.{dotted} is set by {owner}, not here; remove it")


def to_toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [to_toml_value(v) for v in value]
    if dataclasses.is_dataclass(value):
        return plain(value)
    return value


def write(path: str | Path, sections: Mapping[str, Any]) -> Path:
    """Write resolved configs as TOML (None values are left out: TOML has no null)."""
    doc = {name: plain(cfg) for name, cfg in sections.items()}
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
