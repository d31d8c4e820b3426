"""Study runners that chain fedclip's stages; the CLI's `demo` is the smallest of them."""

from pathlib import Path

STUDIES_DIR = Path(__file__).parent / "studies"
"""The shipped study TOMLs; here (not in `study`) so the CLI can list them without importing the study code."""

COHORT_SEED_OFFSETS = {"private": 100, "holdout": 101, "test": 102, "synthetic": 200, "external": 300,
                       "calibration": 400,
                       # the memorization study's cohorts (experiments.generator_study): offsets of their own,
                       # kept because docs/results/generator_study was drawn with them
                       "generator-pool": 0, "generator-holdout": 1, "generator-external": 2,
                       "generator-population": 3}
"""Each generated cohort's seed is the study seed plus its offset, so the cohorts of one study never share
patients and every study that says "private" or "external" means the same draw (the quickstart study, the
synthetic-vs-real comparison and the memorization study read this one table)."""


def cohort_seed(seed: int, role: str) -> int:
    """The generator seed of the `role` cohort (a key of `COHORT_SEED_OFFSETS`) in a study seeded `seed`."""
    return seed + COHORT_SEED_OFFSETS[role]
