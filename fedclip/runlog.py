"""`metrics.jsonl`: one JSON object per line, appended as a run goes.

A resumed run redoes the steps / rounds after its last checkpoint, so the lines logged for them
before the crash are dropped first; the log then never holds a step twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedclip import io


def trim(path: Path, key: str, last: int) -> None:
    """Keep only the lines whose `key` is at most `last` (lines without it are kept)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get(key, 0) <= last]
    io.write_text(path, "".join(line + "\n" for line in keep))


def append(path: Path, record: dict) -> None:
    """One durable line in a run's log."""
    io.append_line(path, json.dumps(record, default=str))
