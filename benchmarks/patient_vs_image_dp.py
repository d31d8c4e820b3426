"""Patient-level DP vs image-level DP vs no DP at equal nominal epsilon: utility on an external hospital,
patient-level membership inference (loss attack, AUC with CI), and the accountant's epsilon per unit.

A cohort with 4 near-duplicate images per patient (2 eyes x 2 visits) is split by patient into members,
non-members and an external hospital; a briefly pretrained visionclip-tiny is fine-tuned on the members.

    .venv/bin/python benchmarks/patient_vs_image_dp.py [--patients 60] [--epochs 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fedclip import config as cfglib  # noqa: E402
from fedclip import evaluate, models, tasks  # noqa: E402
from fedclip.audits.mia import MiaConfig, run_mia  # noqa: E402
from fedclip.data.records import read_metadata  # noqa: E402
from fedclip.data.synthetic import export  # noqa: E402
from fedclip.federated.config import FederateConfig  # noqa: E402
from fedclip.finetune import FinetuneConfig, finetune, load_pixels, prefix_tokens  # noqa: E402
from fedclip.pretrain import PretrainConfig, pretrain  # noqa: E402
from fedclip.synth import CohortSpec  # noqa: E402
from tests.audits.conftest import split_by_patient  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=60, help="members (as many non-members)")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(CohortSpec(seed=31, size=64, hospital="riverside,northgate", diabetic_rate=0.6), root / "all",
               8 * args.patients, workers=2)
        d = split_by_patient(root / "all", root, {"members": 0.5, "nonmembers": 0.5})
        export(CohortSpec(seed=32, size=64, hospital="lakeshore", diabetic_rate=0.6), root / "external", 300,
               workers=2)
        pretrain(PretrainConfig(synth="n=4000 seed=33 size=64", steps=150, batch_size=64, warmup=15, workers=2),
                 root / "pre")
        base = root / "pre" / "checkpoints" / "last"
        records = read_metadata(d["members"])
        keep, y = tasks.labelled([r.labels for r in records], "referable_dr")
        vc0 = models.load_checkpoint(base)
        tokens = prefix_tokens(vc0, load_pixels(vc0, [records[i].path(d["members"]) for i in keep]), 1)
        patients = [str(records[i].meta["patient_id"]) for i in keep]
        ext = read_metadata(root / "external")
        rows = [("pretrained, no fine-tuning", "-", "-", evaluate.evaluate_dir(vc0, root / "external",
                                                                          ["referable_dr"])[0], None)]
        for unit, eps in (("none", None), ("image", 2.0), ("patient", 2.0), ("image", 8.0), ("patient", 8.0)):
            dp = eps is not None
            ft = FinetuneConfig(task="referable_dr", train_blocks=1, epochs=args.epochs, lr=1e-3, optimizer="adamw",
                                batch_size=32 if unit != "patient" else 8, dp=dp, epsilon=eps or 8.0,
                                unit="patient" if unit == "patient" else "image", rounds=1)
            vc = models.load_checkpoint(base)
            finetune(vc, tokens, torch.from_numpy(y), ft, patients=patients)
            fed = FederateConfig(checkpoint=base, data=d["members"], rounds=1, finetune=ft)
            name = f"{unit}-{eps}"
            target = models.save_checkpoint(vc, root / name, provenance={"stage": "federate",
                                                                            "federate": cfglib.plain(fed)})
            mia = run_mia(target, d["members"], d["nonmembers"], None, MiaConfig(attacks=("loss",), n_boot=300),
                          root / f"audit-{name}")
            util = evaluate.zero_shot(vc, [r.path(root / "external") for r in ext], [r.labels for r in ext],
                                      "referable_dr", n_boot=200)
            rows.append((f"fine-tuned, {'no DP' if not dp else unit + '-level DP'}", f"{eps:g}" if dp else "∞",
                         ft.unit if dp else "-", util, mia["attacks"]["loss"]))
        print(f"{len(records)} member images of {len(set(patients))} patients; external hospital: {len(ext)} images")
        print(f"{'model':34s} {'ε':>4s} {'unit':>8s}  {'external bal. acc [CI]':>24s}  "
              f"{'patient-level MIA AUC [CI]':>28s}  {'image-level AUC':>15s}")
        for label, eps, unit, util, mia in rows:
            lo, hi = util["ci"]["balanced_accuracy"]
            line = f"{label:34s} {eps:>4s} {unit:>8s}  {util['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
            if mia:
                p, i = mia["patient"], mia["image"]
                line += f"      {p['auc']:.3f} [{p['ci']['auc'][0]:.3f}, {p['ci']['auc'][1]:.3f}]      {i['auc']:.3f}"
            print(line)
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
