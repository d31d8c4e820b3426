"""Generating 224-px fundus samples vs decoding the same images from PNG, same workers, same run.

    python benchmarks/synth_throughput.py [--n 800] [--workers 2] [--size 224]

Prints images/s for both and the ratio generate / decode (>= 1.0: streaming from the generator is at
least as fast as reading an exported dataset from disk). Both sides run in a process pool that has
already imported its modules and done one warm-up item, so only steady-state work is timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from fedclip.synth import CohortSpec, sample


def _generate(spec: CohortSpec, start: int, stop: int) -> int:
    total = 0
    for i in range(start, stop):
        total += int(sample(spec, i).image[0, 0, 0])
    return total


def _decode(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with Image.open(p) as img:
            total += int(np.asarray(img.convert("RGB"))[0, 0, 0])
    return total


def _timed(pool: ProcessPoolExecutor, fn, jobs: list[tuple]) -> float:
    start = time.perf_counter()
    for f in [pool.submit(fn, *job) for job in jobs]:
        f.result()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = CohortSpec(seed=args.seed, size=args.size)
    bounds = np.linspace(0, args.n, args.workers + 1).astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.n):
            p = Path(tmp) / f"{i:06d}.png"
            Image.fromarray(sample(spec, i).image).save(p)
            paths.append(str(p))
        warm = CohortSpec(seed=args.seed + 1, size=args.size)
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            _timed(pool, _generate, [(warm, 0, 1)] * args.workers)
            _timed(pool, _decode, [(paths[:1],)] * args.workers)
            t_gen = _timed(pool, _generate, [(spec, a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
            t_dec = _timed(pool, _decode, [(paths[a:b],) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    gen, dec = args.n / t_gen, args.n / t_dec
    print(f"images: {args.n} at {args.size} px, workers: {args.workers}, visits per eye: {spec.visits}")
    print(f"generate: {gen:8.1f} images/s")
    print(f"decode:   {dec:8.1f} images/s (PNG from disk, same images)")
    print(f"ratio generate/decode: {gen / dec:.2f}")


if __name__ == "__main__":
    main()
