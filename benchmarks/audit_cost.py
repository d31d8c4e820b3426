"""Audit cost on one fine-tuned target: RMIA with 2 reference models vs LiRA with 16 (AUC, TPR@1%FPR and the
wall-time ratio, goal: RMIA-2 within 0.01 AUC of LiRA-16 at <= 1/8 of its cost), and the wall time of a full
quickstart-scale audit (MIA loss + RMIA, white-box one-run epsilon, report).

    .venv/bin/python benchmarks/audit_cost.py [--members 120] [--epochs 150]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedclip import models  # noqa: E402
from fedclip.audits import metrics  # noqa: E402
from fedclip.audits.epsilon import EpsilonConfig, prepare, run_epsilon  # noqa: E402
from fedclip.audits.mia import MiaConfig, run_mia  # noqa: E402
from fedclip.audits.report import render  # noqa: E402
from fedclip.data.synthetic import export  # noqa: E402
from fedclip.finetune import FinetuneConfig  # noqa: E402
from fedclip.synth import CohortSpec  # noqa: E402
from tests.audits.conftest import federated_target, split_by_patient  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=150)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(CohortSpec(seed=21, size=64, hospital="riverside,northgate", diabetic_rate=0.6, eyes=1, visits=1),
               root / "all", 3 * args.members, workers=2)
        d = split_by_patient(root / "all", root, {"members": 1 / 3, "nonmembers": 1 / 3, "population": 1 / 3})
        base = models.save_checkpoint(models.create("visionclip-tiny", seed=0), root / "base")
        target = federated_target(base, d["members"], root / "target", dp=False, task="dr_grade",
                                  epochs=args.epochs, lr=3e-3, optimizer="adamw")
        figures = {}
        for name, attack, refs in (("RMIA-2", "rmia", 2), ("LiRA-16", "lira", 16)):
            t = time.perf_counter()
            doc = run_mia(target, d["members"], d["nonmembers"], d["population"],
                          MiaConfig(attacks=(attack,), refs=refs, n_boot=200, level="image"), root / name)
            e = doc["attacks"][attack]["image"]
            figures[name] = (e["auc"], e["ci"]["auc"], e["tpr@0.01"], time.perf_counter() - t)
            print(f"{name:8s} AUC {e['auc']:.3f} [{e['ci']['auc'][0]:.3f}, {e['ci']['auc'][1]:.3f}]  "
                  f"TPR@1%FPR {metrics.describe_tpr(e, 0.01)}  {figures[name][3]:6.1f} s")
        r, lira = figures["RMIA-2"], figures["LiRA-16"]
        print(f"AUC difference RMIA-2 - LiRA-16: {r[0] - lira[0]:+.3f}; wall-time ratio RMIA-2/LiRA-16: "
              f"{r[3] / lira[3]:.3f}")

        t = time.perf_counter()
        run_mia(target, d["members"], d["nonmembers"], d["population"],
                MiaConfig(attacks=("loss", "rmia"), refs=2, n_boot=500), root / "full-mia")
        ft = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=15, batch_size=32, lr=1.0, epsilon=8.0)
        run_epsilon(prepare(base, d["members"], ft), EpsilonConfig(canaries=500), root / "full-eps", source={})
        render([root / "full-mia", root / "full-eps"], root / "report")
        print(f"full audit (MIA loss + RMIA-2, white-box one-run epsilon, report): {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
