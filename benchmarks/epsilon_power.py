"""What the white-box one-run ε audit catches: the honest mechanism, the noise halved and the clip off (the
claim unchanged), each audited once, with the (ε, δ)-DP and μ-GDP analyses (docs/audits.md's table).

    .venv/bin/python benchmarks/epsilon_power.py [--epsilon 1] [--canaries 5000] [--seeds 2]

Each line: the mechanism, the headline ε_lb (best of both analyses), each analysis, and whether the break
was caught (ε_lb above the claimed ε). The baseline is the honest mechanism in the same run.
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
from fedclip.audits.epsilon import EpsilonConfig, one_run, prepare  # noqa: E402
from fedclip.data.synthetic import export  # noqa: E402
from fedclip.finetune import FinetuneConfig  # noqa: E402
from fedclip.synth import CohortSpec  # noqa: E402
from tests.audits.conftest import split_by_patient  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilon", type=float, default=1.0, help="the claimed epsilon (delta 1e-5)")
    ap.add_argument("--canaries", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=2, help="audits per mechanism (the auditor's seed)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the ε audit tests' cohort: one image per patient, 120 members
        export(CohortSpec(seed=21, size=64, hospital="riverside,northgate", diabetic_rate=0.6, eyes=1, visits=1),
               root / "all", 360)
        d = split_by_patient(root / "all", root, {"members": 1 / 3, "rest": 2 / 3})
        base = models.save_checkpoint(models.create("visionclip-tiny", seed=0), root / "base")
        ft = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=3, batch_size=32, lr=1.0, dp=True,
                            epsilon=args.epsilon, rounds=1)
        t = prepare(base, d["members"], ft)
        claim = t.theoretical["epsilon"]
        r = t.plan[0]
        print(f"claimed ε {claim:.3f} at δ {ft.delta:g}: σ {r.sigma:.3f}, q {r.q:.3f}, {r.steps} steps; "
              f"{args.canaries} canaries")
        honest = []
        for how in (None, "noise-half", "clip-off"):
            for seed in range(args.seeds):
                start = time.perf_counter()
                b = one_run(t, EpsilonConfig(canaries=args.canaries, seed=seed), broken=how)[0]
                if how is None:
                    honest.append(b["epsilon_lb"])
                print(f"{how or 'honest':>10}  seed {seed}  ε_lb {b['epsilon_lb']:.2f} ({b['analysis']}; (ε,δ) "
                      f"{b['epsilon_dp']['epsilon_lb']:.2f}, GDP μ {b['gdp']['mu_lb']:.3f} → ε "
                      f"{b['gdp']['epsilon_lb']:.2f})  {'CAUGHT' if b['epsilon_lb'] > claim else 'missed'}  "
                      f"x{b['epsilon_lb'] / max(max(honest), 1e-9):.1f} honest  {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
