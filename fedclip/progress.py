"""The one progress display: a rich bar on stderr, silent when disabled.

Library code reports progress through `progress_bar`; whether anything is drawn is the caller's
choice (the CLI turns it on; tests and library users get silence unless they ask). When stderr is not a
terminal (a log file, a batch job) a bar would show nothing until the end and then one truncated line, so
plain lines are printed instead, at most every `PLAIN_EVERY_S` seconds, and one at the end. No bar is
drawn for work whose total is 0 (nothing to do).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_enabled = os.environ.get("FEDCLIP_PROGRESS", "") == "1"
PLAIN_EVERY_S = 30.0


def enable(on: bool = True) -> None:
    """Turn progress bars on or off for this process (the CLI turns them on)."""
    global _enabled
    _enabled = on


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; extra fields (loss, lr, ...) are shown after the bar."""
    if not _enabled or total == 0:
        yield lambda n=1, **fields: None
        return
    if not sys.stderr.isatty():
        with _plain_lines(description, total) as advance:
            yield advance
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=Console(file=sys.stderr), transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: object) -> None:
            progress.update(task, advance=n, **({"info": _info(fields)} if fields else {}))

        yield advance


def _info(fields: dict[str, object]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


@contextmanager
def _plain_lines(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Periodic plain lines for a log file: `description 120/500 (24%) 0:01:10 elapsed  loss 3.2`."""
    start = last = time.monotonic()
    state: dict[str, object] = {"done": 0, "info": ""}

    def line() -> None:
        done, elapsed = int(state["done"]), time.monotonic() - start  # type: ignore[call-overload]
        of = f"/{total} ({done / total:.0%})" if total else ""
        print(f"{description} {done}{of} {time.strftime('%H:%M:%S', time.gmtime(elapsed))} elapsed"
              + (f"  {state['info']}" if state["info"] else ""), file=sys.stderr, flush=True)

    def advance(n: int = 1, **fields: object) -> None:
        nonlocal last
        state["done"] = int(state["done"]) + n  # type: ignore[call-overload]
        if fields:
            state["info"] = _info(fields)
        if time.monotonic() - last >= PLAIN_EVERY_S:
            last = time.monotonic()
            line()

    yield advance
    line()
