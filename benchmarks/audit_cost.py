"""What the audits cost and what they can find, on 2 CPU cores or more:

1. the one-run ε audit's lower bound against the claim, ε = 1, 2, 4, 8, white-box (1,000 gradient canaries,
   every privatized gradient seen, on a projection head) and black-box (100 outlier input canaries, the
   final model, on a head with one trained block, honest and with the noise secretly off), each analysed as
   (ε, δ)-DP (Steinke, Nasr, Jagielski 2023) and as μ-GDP (Mahloujifar, Melis, Chaudhuri 2024);
2. P5: RMIA with 2 reference models against LiRA with 16 (AUC, TPR@1%FPR, wall time; goal: within 0.01 AUC
   at <= 1/8 of the cost), and LiRA-16's references trained on Ray by `--workers` processes against the same
   references trained in this process (the baseline, measured in the same run);
3. the wall time of a full quickstart-scale audit (MIA loss + RMIA, white-box one-run ε, report).

    .venv/bin/python benchmarks/audit_cost.py [--members 120] [--epochs 150] [--workers 2] [--skip epsilon,mia,full]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedclip import models  # noqa: E402
from fedclip.audits import metrics  # noqa: E402
from fedclip.audits.epsilon import EpsilonConfig, one_run, prepare, run_epsilon  # noqa: E402
from fedclip.audits.mia import MiaConfig, run_mia  # noqa: E402
from fedclip.audits.report import render  # noqa: E402
from fedclip.data.synthetic import export  # noqa: E402
from fedclip.finetune import FinetuneConfig  # noqa: E402
from fedclip.synth import CohortSpec  # noqa: E402
from tests.audits.conftest import federated_target, split_by_patient  # noqa: E402


def epsilon_table(base: Path, members: Path) -> None:
    print("one-run ε audit, δ 1e-5 (ε_lb / claimed ε):")
    print(f"{'claimed ε':>9}  {'threat':9}  {'mechanism':9}  {'canaries':>8}  {'(ε,δ)-DP':>14}  {'μ-GDP':>14}  "
          f"{'s':>5}")
    projection = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=3, batch_size=32, lr=1.0, dp=True)
    one_block = replace(projection, train_blocks=1, lr=1e-3, optimizer="adamw")
    for claim in (1.0, 2.0, 4.0, 8.0):
        for threat, ft, m, broken in (("white-box", projection, 1000, None), ("black-box", one_block, 100, None),
                                      ("black-box", one_block, 100, "noise-off")):
            t = prepare(base, members, replace(ft, epsilon=claim, rounds=1))
            eps = t.theoretical["epsilon"]
            start = time.perf_counter()
            b = one_run(t, EpsilonConfig(threat=threat, canaries=m), broken=broken)[0]
            dp, gdp = b["epsilon_dp"]["epsilon_lb"], b["gdp"]["epsilon_lb"]
            print(f"{eps:9.2f}  {threat:9}  {broken or 'honest':9}  {m:8d}  {dp:6.2f} ({dp / eps:4.2f})  "
                  f"{gdp:6.2f} ({gdp / eps:4.2f})  {time.perf_counter() - start:5.0f}")


def mia_cost(base: Path, d: dict[str, Path], root: Path, epochs: int, workers: int) -> None:
    target = federated_target(base, d["members"], root / "target", dp=False, task="dr_grade",
                              epochs=epochs, lr=3e-3, optimizer="adamw")
    figures = {}
    runs = [("RMIA-2", "rmia", 2, 1), ("LiRA-16", "lira", 16, 1)]
    if workers > 1:
        runs.append((f"LiRA-16 on Ray, {workers} workers", "lira", 16, workers))
    for name, attack, refs, w in runs:
        t = time.perf_counter()
        doc = run_mia(target, d["members"], d["nonmembers"], d["population"],
                      MiaConfig(attacks=(attack,), refs=refs, n_boot=200, level="image", workers=w), root / name)
        e = doc["attacks"][attack]["image"]
        figures[name] = (e["auc"], time.perf_counter() - t)
        print(f"{name:28s} AUC {e['auc']:.3f} [{e['ci']['auc'][0]:.3f}, {e['ci']['auc'][1]:.3f}]  "
              f"TPR@1%FPR {metrics.describe_tpr(e, 0.01)}  {figures[name][1]:6.1f} s")
    (r_auc, r_s), (l_auc, l_s) = figures["RMIA-2"], figures["LiRA-16"]
    print(f"P5: AUC RMIA-2 - LiRA-16 {r_auc - l_auc:+.3f} (goal within 0.01); wall time RMIA-2 / LiRA-16 "
          f"{r_s / l_s:.3f} (goal <= 0.125)")
    if workers > 1:
        ray_auc, ray_s = figures[f"LiRA-16 on Ray, {workers} workers"]
        print(f"Ray speed-up with {workers} workers: {l_s / ray_s:.2f}x (same AUC: {abs(ray_auc - l_auc) < 1e-3})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2, help="Ray workers for the reference-model comparison")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: epsilon, mia, full")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(CohortSpec(seed=21, size=64, hospital="riverside,northgate", diabetic_rate=0.6, eyes=1, visits=1),
               root / "all", 3 * args.members, workers=2)
        d = split_by_patient(root / "all", root, {"members": 1 / 3, "nonmembers": 1 / 3, "population": 1 / 3})
        base = models.save_checkpoint(models.create("visionclip-tiny", seed=0), root / "base")
        if "epsilon" not in skip:
            epsilon_table(base, d["members"])
        if "mia" not in skip:
            mia_cost(base, d, root, args.epochs, args.workers)
        if "full" not in skip:
            t = time.perf_counter()
            run_mia(root / "target" if (root / "target").exists() else
                    federated_target(base, d["members"], root / "target", dp=False, task="dr_grade",
                                     epochs=args.epochs, lr=3e-3, optimizer="adamw"),
                    d["members"], d["nonmembers"], d["population"],
                    MiaConfig(attacks=("loss", "rmia"), refs=2, n_boot=500), root / "full-mia")
            ft = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=15, batch_size=32, lr=1.0, epsilon=8.0)
            run_epsilon(prepare(base, d["members"], ft), EpsilonConfig(canaries=500), root / "full-eps", source={})
            render([root / "full-mia", root / "full-eps"], root / "report")
            print(f"full audit (MIA loss + RMIA-2, white-box one-run ε, report): {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
