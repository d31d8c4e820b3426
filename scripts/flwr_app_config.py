"""Rewrite pyproject.toml's `[tool.flwr.app.config]` from `FederateConfig` (`make flwr-config`).

The Flower app reads its settings from that table and accepts `flwr run -c` overrides only of keys
listed there, so it must hold every setting; generating it keeps one source of defaults.
"""

from __future__ import annotations

import re
from pathlib import Path

from fedclip.federated.config import flower_app_config

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SECTION = re.compile(r"^\[tool\.flwr\.app\.config(\.[^\]]+)?\]\n(?:(?!\[).*\n)*", re.MULTILINE)


def main() -> None:
    text = PYPROJECT.read_text()
    blocks = list(SECTION.finditer(text))
    if not blocks:
        raise SystemExit(f"{PYPROJECT} has no [tool.flwr.app.config] table to replace")
    start, end = blocks[0].start(), blocks[-1].end()
    PYPROJECT.write_text(text[:start] + flower_app_config() + text[end:])
    print(f"wrote [tool.flwr.app.config] in {PYPROJECT}")


if __name__ == "__main__":
    main()
