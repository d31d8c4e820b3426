"""Stages chained through a run dir: a finished stage is skipped on re-run, a changed one reruns.

    RUN/stages/<name>.json   {"key": ..., "done": false}                      while it runs
                             {"key": ..., "done": true, "outputs": {...}}      once it finished

A stage's outputs are a small frozen dataclass (or a dict of them, keyed by run name): what the next
stages read, typed (`up["pretrain"].private.checkpoint`), stored as its JSON fields and rebuilt from them on
re-run. A record whose outputs no longer fit the stage's type (written by an older fedclip) counts as
unfinished: the stage runs again in place, and its own steps keep the files they find.

A stage's key hashes its slice of the resolved config together with the *outputs* of the stages it
reads (which carry their fingerprints: data SHA-256, checkpoint weights SHA-256). So a changed
setting reruns that stage, and a downstream stage reruns only when what it reads changed.

Ctrl-C leaves the stage record at `done: false` with its key: the next run resumes it, and the stage's
own steps skip what they had finished (exports resume, pretraining continues from its checkpoint,
audits with a results file are kept). A stage whose key changed since it started (or since it
finished), or that `--from` names or follows, has its directories removed first: nothing stale is
mixed into new results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip import io
from fedclip.errors import FedclipError

STAGES_DIR = "stages"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Mapping[str, Any]], Any]  # upstream outputs -> this stage's outputs (of type `output`)
    output: Any  # a frozen dataclass, or dict[str, that dataclass]: what `run` returns
    settings: Mapping[str, Any]  # the part of the config this stage depends on
    reads: tuple[str, ...] = ()  # stages whose outputs it uses
    dirs: tuple[Path, ...] = ()  # what it writes (removed before it reruns from scratch)
    describe: str = ""


def encode(outputs: Any) -> Any:
    """A stage's outputs as JSON-ready values (dataclasses as their fields)."""
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        return {f.name: encode(getattr(outputs, f.name)) for f in dataclasses.fields(outputs)}
    if isinstance(outputs, Mapping):
        return {str(k): encode(v) for k, v in outputs.items()}
    if isinstance(outputs, list | tuple):
        return [encode(v) for v in outputs]
    return str(outputs) if isinstance(outputs, Path) else outputs


def decode(hint: Any, value: Any) -> Any:
    """`value` (JSON) as the type `hint`: a dataclass from its fields, `X | None`, dict[str, X], list, tuple.
    Raises TypeError where the value does not fit (a missing or unknown field)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # only `X | None` is used for outputs
        return decode(inner, value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise TypeError(f"{hint.__name__}: expected fields, got {value!r}")
        hints = typing.get_type_hints(hint)
        return hint(**{k: decode(hints[k], v) if k in hints else v for k, v in value.items()})
    if origin in (dict, Mapping) and isinstance(value, Mapping):
        return {k: decode(args[1], v) for k, v in value.items()}
    if origin is tuple:
        return tuple(decode(args[0], v) for v in value)
    if origin is list:
        return [decode(args[0], v) for v in value]
    return value


def _finished(record: Mapping[str, Any], output: Any) -> Any | None:
    """A finished record's outputs as `output`, or None where they do not fit it (an older format)."""
    try:
        return decode(output, record["outputs"])
    except (TypeError, KeyError, ValueError):
        return None


def stage_key(settings: Mapping[str, Any], upstream: Mapping[str, Any]) -> str:
    blob = json.dumps({"settings": settings, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _clear(paths: Sequence[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_stages(root: Path, stages: Sequence[Stage], *, start_from: str | None = None,
               on_event: Callable[[str, Stage, float], None] | None = None) -> dict[str, Any]:
    """Run `stages` in order in `root`; returns every stage's outputs (finished earlier or now), each of its
    stage's `output` type: what a stage returns is stored and read back the way a re-run reads it.

    `on_event(kind, stage, seconds)` is told "skip", "start" and "done" (for the console).
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names in {names}")
    if start_from is not None and start_from not in names:
        raise FedclipError(f"--from {start_from}: no such stage; the stages are {', '.join(names)}")
    first_forced = names.index(start_from) if start_from is not None else len(names)
    done: dict[str, Any] = {}
    for i, s in enumerate(stages):
        missing = [r for r in s.reads if r not in done]
        if missing:
            raise ValueError(f"stage {s.name} reads {missing}, which do not run before it")
        key = stage_key(s.settings, {r: encode(done[r]) for r in s.reads})
        record_path = root / STAGES_DIR / f"{s.name}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        forced = i >= first_forced
        if record and record.get("done") and record.get("key") == key and not forced:
            kept = _finished(record, s.output)
            if kept is not None:
                done[s.name] = kept
                if on_event:
                    on_event("skip", s, 0.0)
                continue
        if forced or (record and record.get("key") != key):
            _clear(s.dirs)
        io.write_json(record_path, {"key": key, "done": False})
        if on_event:
            on_event("start", s, 0.0)
        t0 = time.perf_counter()
        outputs = encode(s.run(done))
        seconds = time.perf_counter() - t0
        done[s.name] = decode(s.output, outputs)  # a stage returning something else fails here, not on re-run
        io.write_json(record_path, {"key": key, "done": True, "seconds": round(seconds, 1), "outputs": outputs})
        if on_event:
            on_event("done", s, seconds)
    return done
