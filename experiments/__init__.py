"""Study runners that chain fedclip's stages; the CLI's `demo` is the smallest of them."""

from pathlib import Path

STUDIES_DIR = Path(__file__).parent / "studies"
"""The shipped study TOMLs; here (not in `study`) so the CLI can list them without importing the study code."""
