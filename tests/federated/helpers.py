"""Reading what a node keeps on its own disk."""

import json


def train_entries(state_dir):
    """A node's training entries in its lifetime ledger (state dir, never the run dir)."""
    (path,) = state_dir.glob("ledger-*.jsonl")
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["kind"] == "train"]


