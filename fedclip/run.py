"""The run directory's layout, named once. Every stage reads and writes its files through these names.

    runs/<name>/
      config.toml           resolved config of the run (every default written out)
      metrics.jsonl         one JSON object per step / round / evaluation
      members.csv           which records / patients trained this model (pretraining)
      checkpoints/<tag>/    model.safetensors + config.json (provenance, weights SHA-256) + open_clip_config.json
      ledger.json           a federation's server-side summary of what nodes reported
      state.json            a federation's last completed round and the settings a resume must share
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
MEMBERS_FILE = "members.csv"
CHECKPOINTS_DIR = "checkpoints"
LEDGER_SUMMARY_FILE = "ledger.json"
STATE_FILE = "state.json"
LAST = "last"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def members(self) -> Path:
        return self.root / MEMBERS_FILE

    @property
    def ledger_summary(self) -> Path:
        return self.root / LEDGER_SUMMARY_FILE

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    def checkpoint(self, tag: str = LAST) -> Path:
        return self.root / CHECKPOINTS_DIR / tag
