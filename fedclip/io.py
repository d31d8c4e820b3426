"""The one way fedclip writes a file that someone else may read: atomically and durably.

A reader (another process, a resumed run, a privacy officer's script) must see the old or the new
content, never a half-written file. Every file goes to a temporary sibling, is fsync'd, renamed over
the target, and the directory is fsync'd so the rename itself survives a power cut. A directory (a
checkpoint with its train state) is built aside and swapped in with one `renameat2(RENAME_EXCHANGE)`,
so a reader sees the old directory or the new one, never neither.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedclip.errors import StorageError


def _umask() -> int:
    """The process umask, read without changing it (Linux reports it in /proc; elsewhere it is set and
    restored at once, at import, before any thread runs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create 0600 / 0700; a finished file or directory gets what `open` / `mkdir` would
# have given it, so a colleague (or a privacy officer's account) can read outputs where the umask allows
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


@contextmanager
def _storage(path: Path) -> Iterator[None]:
    """A full, read-only or failing disk becomes one clear error naming the file (files and directories are
    swapped in only when complete, so the previous version stays; an append may leave its line unsynced)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS:
            raise
        raise StorageError(f"cannot write {path}: {e.strerror}; the previous version (if any) is intact — free "
                           "disk space or fix the permissions, then run the same command again") from None


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """`mode` (e.g. 0o600 for a private key) is set before the file appears under its name."""
    path = Path(path)
    with _storage(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), FILE_MODE if mode is None else mode)
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line and make it durable (for append-only logs such as a privacy ledger)."""
    path = Path(path)
    with _storage(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(path.parent)


@contextmanager
def line_log(path: str | Path) -> Iterator[Callable[[str], None]]:
    """Append lines to a per-step log (pretraining's metrics.jsonl): each is flushed so a reader sees it at
    once, and the file is fsync'd when the log closes; one fsync per line (`append_line`) would cost more
    than a fast GPU step."""
    path = Path(path)
    with _storage(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally, after the fsync
    try:
        def write(line: str) -> None:
            with _storage(path):
                fh.write(line.rstrip("\n") + "\n")
                fh.flush()

        yield write
    finally:
        with _storage(path):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or file system lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(Path(dirpath) / f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(dirpath)


@contextmanager
def replace_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then swap it in whole (or leave `path` untouched on error).

        with io.replace_dir(run / "checkpoints" / "last") as tmp:
            (tmp / "model.safetensors").write_bytes(...)
    """
    path = Path(path)
    with _storage(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, DIR_MODE)
    try:
        with _storage(path):
            yield tmp
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    """`tmp` (complete) becomes `path`; the old `path`, if any, ends up in `tmp` or `.NAME.old`."""
    with _storage(path):
        _fsync_tree(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            pass  # tmp now holds the old copy
        else:  # no atomic exchange here: the shortest possible window with neither, then the new one
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(tmp, path)
        fsync_dir(path.parent)


def remove_stale(parent: str | Path) -> None:
    """Remove what a killed writer left behind in `parent` (hidden `.NAME.*.tmp` siblings)."""
    for p in Path(parent).glob(".*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
