"""The one exception type fedclip raises for problems a user can fix.

Every message says what went wrong *and* what to do about it, naming the file, row or flag involved,
so the CLI can print it as is instead of a traceback.
"""

from __future__ import annotations


class FedclipError(Exception):
    """A problem with the user's input, files or settings; the message says how to fix it."""


class DataError(FedclipError):
    """A dataset on disk is unreadable or inconsistent (corrupt image, missing column, unknown label)."""


class ModelError(FedclipError):
    """A model name or checkpoint cannot be used (unknown name, missing file, wrong architecture)."""


class StorageError(FedclipError):
    """The disk refused a write (full, read-only, no permission); the previous version is intact."""
