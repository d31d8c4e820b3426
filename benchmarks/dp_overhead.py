"""DP-SGD step time / non-DP step time, same model, batch and trained layers, per grad-sample mode.

    python benchmarks/dp_overhead.py [--batch-sizes 64,256] [--steps 40] [--repeats 3]
        [--modes bk,hooks,ew,functorch,ghost]

Both sides run `fedclip.finetune.finetune` (the function federated clients use) on the same cached
frozen-prefix tokens of generated images; the time per step is the training loop alone, the median of
`--repeats` runs taken alternately (DP, non-DP, DP, ...: single runs of 40 steps moved ratios by 0.2). `bk` is
fedclip's book-keeping clipping (`fedclip.dp`, the default); the others are Opacus' modes. The target
(<= 1.2) is about the configurations a federation can choose: projection only (the default), the last
block(s), LoRA. The last table is what a hospital feels: one default federated round (projection only,
patient-level DP, 3 local epochs, batch 256 patients) end to end, DP vs the same round without DP.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from fedclip import models
from fedclip.federated.config import federated_finetune
from fedclip.finetune import FinetuneConfig, finetune, load_pixels, prefix_tokens
from fedclip.synth import CohortSpec, sample
from fedclip.tasks import labelled

PARTS = (("projection (default)", 0, 0), ("last block", 1, 0), ("last 2 blocks", 2, 0),
         ("LoRA r=8, last block", 1, 8))


def _step_ms(tokens: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig) -> float:
    return finetune(models.create("visionclip-tiny", seed=0), tokens, y, cfg).seconds_per_step * 1e3


def _medians(tokens: torch.Tensor, y: torch.Tensor, plain: FinetuneConfig, dp: list[FinetuneConfig],
             repeats: int) -> tuple[float, list[float]]:
    """Median ms per step of the non-DP config and of each DP config, runs interleaved so that a slow
    stretch of the machine lands on both sides."""
    times: list[list[float]] = [[] for _ in range(len(dp) + 1)]
    for _ in range(repeats):
        for i, cfg in enumerate([plain, *dp]):
            times[i].append(_step_ms(tokens, y, cfg))
    med = [statistics.median(t) for t in times]
    return med[0], med[1:]


def _noise_ms(blocks: int, rank: int, repeats: int = 20) -> float:
    """Opacus' secure-mode noise for the trained parameters of one step: the floor under any DP step."""
    from opacus.optimizers.optimizer import _generate_noise

    from fedclip.head import build_head

    head = build_head(models.create("visionclip-tiny", seed=0), FinetuneConfig(train_blocks=blocks, lora_rank=rank))
    params = [p for p in head.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(repeats):
        for p in params:
            _generate_noise(1.0, p, generator=gen, secure_mode=True)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="64,256")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--modes", default="bk,hooks,ew,functorch,ghost")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration; the median is reported")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    vc = models.create("visionclip-tiny", seed=0)
    samples = [sample(CohortSpec(seed=1, size=64, diabetic_rate=0.6), i) for i in range(args.n)]
    keep, y = labelled([s.labels for s in samples], "referable_dr")
    y = torch.from_numpy(y)
    pixels = load_pixels(vc, [samples[i].image for i in keep])
    patients = [str(samples[i].meta["patient_id"]) for i in keep]
    print(f"visionclip-tiny, {len(keep)} images, Poisson sampling, CPU threads {torch.get_num_threads()}")
    print(f"{'trained part':<22}{'batch':>6}  {'mode':<11}{'non-DP ms':>10}{'DP ms':>9}{'ratio':>8}")
    for label, blocks, rank in PARTS:
        tokens = prefix_tokens(vc, pixels, blocks)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            epochs = max(1, -(-args.steps * batch // len(keep)))
            base = FinetuneConfig(train_blocks=blocks, lora_rank=rank, batch_size=batch, epochs=epochs)
            # expanded weights needs every trained module to be a supported layer: not with LoRA
            modes = [m for m in args.modes.split(",") if not (rank and m == "ew")]
            plain, dps = _medians(tokens, y, FinetuneConfig(**{**base.__dict__, "dp": False}),
                                  [FinetuneConfig(**{**base.__dict__, "grad_sample_mode": m, "noise_multiplier": 1.0})
                                   for m in modes], args.repeats)
            for mode, dp in zip(modes, dps, strict=True):
                print(f"{label:<22}{batch:>6}  {mode:<11}{plain:>10.2f}{dp:>9.2f}{dp / plain:>8.2f}")
            print(f"{'':<30}secure noise alone: {_noise_ms(blocks, rank):.2f} ms per step "
                  f"(4 Gaussians per trained parameter, any implementation pays it)")

    print("\none default federated round at a hospital (finetune() end to end: set-up, noise calibration, "
          "3 local epochs)")
    tokens = prefix_tokens(vc, pixels, 0)
    ft = federated_finetune()
    for mode in args.modes.split(","):
        if mode not in ("bk", "hooks", "functorch"):
            continue  # patient-level DP runs on these modes only
        times = {}
        for dp in (False, True):
            start = time.perf_counter()
            finetune(models.create("visionclip-tiny", seed=0), tokens, y,
                     FinetuneConfig(**{**ft.__dict__, "dp": dp, "grad_sample_mode": mode}), patients=patients)
            times[dp] = time.perf_counter() - start
        print(f"  {mode:<11} non-DP {times[False]:.2f} s, DP {times[True]:.2f} s: "
              f"ratio {times[True] / times[False]:.2f}")


if __name__ == "__main__":
    main()
