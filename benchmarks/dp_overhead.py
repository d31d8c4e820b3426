"""DP-SGD step time / non-DP step time, same model, batch and trained layers, per grad-sample mode.

    python benchmarks/dp_overhead.py [--batch-size 64] [--steps 40]

Both sides run `fedclip.finetune.finetune` (the function federated clients use) on the same cached
frozen-prefix tokens of generated images; the time per step is the training loop alone. The default
federated configuration (projection only, hooks) is the one the target (<= 1.2) is about; one and two
trained blocks and LoRA adapters are shown for comparison.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from fedclip import models
from fedclip.finetune import FinetuneConfig, finetune, load_pixels, prefix_tokens
from fedclip.synth import CohortSpec, sample
from fedclip.tasks import labelled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(torch.get_num_threads())
    vc = models.create("visionclip-tiny", seed=0)
    samples = [sample(CohortSpec(seed=1, size=64, diabetic_rate=0.6), i) for i in range(args.n)]
    keep, y = labelled([s.labels for s in samples], "referable_dr")
    y = torch.from_numpy(y)
    pixels = load_pixels(vc, [samples[i].image for i in keep])
    epochs = max(1, -(-args.steps * args.batch_size // len(keep)))
    print(f"visionclip-tiny, batch {args.batch_size}, ~{args.steps} steps, Poisson sampling, CPU threads "
          f"{torch.get_num_threads()}")
    print(f"{'trained part':<22}{'mode':<11}{'non-DP ms':>10}{'DP ms':>9}{'ratio':>8}")
    for label, blocks, rank in (("projection (default)", 0, 0), ("last block", 1, 0), ("last 2 blocks", 2, 0),
                                ("LoRA r=8, last block", 1, 8)):
        tokens = prefix_tokens(vc, pixels, blocks)
        base = FinetuneConfig(train_blocks=blocks, lora_rank=rank, batch_size=args.batch_size, epochs=epochs)
        plain = finetune(models.create("visionclip-tiny", seed=0), tokens, y,
                         FinetuneConfig(**{**base.__dict__, "dp": False})).seconds_per_step
        for mode in ("hooks", "ew", "functorch", "ghost"):
            if rank and mode == "ew":
                continue  # expanded weights needs every trained module to be a supported layer
            dp = finetune(models.create("visionclip-tiny", seed=0), tokens, y,
                          FinetuneConfig(**{**base.__dict__, "grad_sample_mode": mode, "noise_multiplier": 1.0})
                          ).seconds_per_step
            print(f"{label:<22}{mode:<11}{plain * 1e3:>10.2f}{dp * 1e3:>9.2f}{dp / plain:>8.2f}")


if __name__ == "__main__":
    main()
