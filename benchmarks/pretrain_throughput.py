"""`fedclip pretrain` vs `python -m open_clip_train.main`: samples/s and peak memory, same run.

    python benchmarks/pretrain_throughput.py [--n 2048] [--steps 40] [--batch-size 64] [--workers 2]

Both train the same open_clip config (visionclip-tiny, from one fedclip checkpoint loaded by
open_clip_train as `local-dir:`) on the same exported CSV dataset, same batch size, workers and
precision (fp32), gradient clipping at 1.0 (each keeps its own augmentation: ours adds rotation and
colour jitter). Throughput is the mean over steps after the first 5 of batch size / step time (data
waits included), read from each trainer's own per-step log. Peak memory is each trainer's main-process
maximum RSS.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

WRAP = """
import resource, runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module({module!r}, run_name="__main__")
finally:
    print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
"""


def _run(module: str, argv: list[str], cwd: Path) -> tuple[str, float]:
    code = WRAP.format(argv=[module, *argv], module=module)
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{module} failed:\n{res.stderr[-4000:]}")
    peak = float(re.findall(r"PEAK_RSS_MB ([\d.]+)", res.stderr)[-1])
    return res.stdout + res.stderr, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip", type=int, default=5)
    args = ap.parse_args()

    from fedclip import models
    from fedclip.data.synthetic import export
    from fedclip.synth import CohortSpec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        export(CohortSpec(seed=0, size=64), data, args.n, workers=args.workers)
        ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp / "init")
        ours_out, ours_peak = _run("fedclip.cli.main", [
            "--quiet", "pretrain", "--out", str(tmp / "ours"), "--data", str(data), "--init", str(ckpt),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--precision", "fp32", "--lr", "5e-4"], tmp)
        log = [json.loads(line) for line in (tmp / "ours" / "metrics.jsonl").read_text().splitlines()]
        ours_rate = sum(r["samples_per_s"] for r in log[args.skip:]) / len(log[args.skip:])

        epochs = max(1, -(-args.steps * args.batch_size // args.n))
        theirs_out, theirs_peak = _run("open_clip_train.main", [
            "--train-data", str(data / "metadata.csv"), "--dataset-type", "csv", "--csv-img-key", "filepath",
            "--csv-caption-key", "caption", "--csv-separator", ",", "--model", f"local-dir:{ckpt}",
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--precision", "fp32",
            "--epochs", str(epochs), "--lr", "5e-4", "--warmup", "5", "--grad-clip-norm", "1.0",
            "--log-every-n-steps", "1",
            "--save-frequency", "0", "--logs", str(tmp / "theirs"), "--name", "bench", "--device", "cpu"], data)
        times = [float(t) for t in re.findall(r"Batch \(t\): ([\d.]+)", theirs_out)]
        times = times[args.skip:args.steps] or times
        theirs_rate = args.batch_size / (sum(times) / len(times))

    print(f"dataset: {args.n} images (64 px), batch {args.batch_size}, workers {args.workers}, fp32, "
          f"{args.steps} steps (first {args.skip} skipped)")
    print(f"fedclip pretrain:      {ours_rate:7.1f} samples/s   peak RSS {ours_peak:7.0f} MB")
    print(f"open_clip_train.main:  {theirs_rate:7.1f} samples/s   peak RSS {theirs_peak:7.0f} MB")
    print(f"ratio fedclip/open_clip_train: {ours_rate / theirs_rate:.2f}")


if __name__ == "__main__":
    main()
