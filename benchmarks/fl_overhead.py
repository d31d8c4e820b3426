"""Wall time of a simulated federated round / the same local training run in one process.

    python benchmarks/fl_overhead.py [--rounds 4] [--per-hospital 300]

Both sides run `fedclip.federated.task.client_train` for three hospitals with the same config (DP on,
default trained part), warm (rounds after the first, so imports and the frozen-prefix cache are
paid). Simulated: Flower's simulation engine (Ray, one actor per client, 2 CPUs), round time from the
server's per-round timestamps. Local: the three clients one after another in this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

from fedclip import models
from fedclip.data.synthetic import export
from fedclip.federated.config import FederateConfig
from fedclip.federated.node import Node
from fedclip.federated.policy import NodePolicy
from fedclip.federated.simulation import simulate
from fedclip.federated.task import client_train, load_global
from fedclip.head import trained_keys
from fedclip.synth import CohortSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-hospital", type=int, default=300)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export(CohortSpec(seed=5, size=64, hospital="riverside,northgate,summit"), tmp / "data",
               3 * args.per_hospital, workers=2)
        ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp / "ckpt")
        cfg = FederateConfig(checkpoint=ckpt, data=tmp / "data", out=tmp / "sim", rounds=args.rounds,
                             client_eval=False).with_finetune(epsilon=50.0)
        policies = [NodePolicy(max_epsilon=50.0)] * 3  # the hospitals allow the benchmark's budget
        simulate(cfg, state_root=tmp / "sim-nodes", policies=policies)
        stamps = [json.loads(line)["time"] for line in (tmp / "sim" / "metrics.jsonl").read_text().splitlines()]
        sim_round = statistics.mean(b - a for a, b in zip(stamps[1:-1], stamps[2:], strict=True))

        local_cfg = replace(cfg, out=tmp / "local")
        vc = load_global(local_cfg, None)
        arrays = {k: vc.model.state_dict()[k] for k in trained_keys(vc, cfg.finetune.train_blocks)}
        times = []
        for r in range(1, args.rounds + 1):
            start = time.perf_counter()
            for pid in range(3):
                node = Node(f"client-{pid}", policies[pid], tmp / "local-nodes" / f"client-{pid}", deployed=False)
                client_train(local_cfg, node, {"partition-id": pid, "num-partitions": 3}, arrays, r)
            times.append(time.perf_counter() - start)
        local_round = statistics.mean(times[1:])
    print(f"3 hospitals x {args.per_hospital} images, {args.rounds} rounds, DP on, warm rounds only")
    print(f"simulated round (Flower + Ray, 2 CPUs): {sim_round:6.2f} s")
    print(f"same local training, one process:      {local_round:6.2f} s")
    print(f"ratio simulated/local: {sim_round / local_round:.2f}")


if __name__ == "__main__":
    main()
