"""Membership attacks on a generator that use the population: calibration against reference generators
(white-box) and a density ratio of samples to population (black-box).

A raw denoising loss mostly says how *hard* an image is to denoise (a blurred or dark photograph is
easy, a haemorrhage-rich one hard), so at small cohorts it ranks patients by difficulty, not by
membership, and its AUC can fall below 0.5 (the DP rows of docs/results/generator_study.md). Both
attacks here take that difficulty out with data the auditor holds and the generator never saw:

- `white-box-calibrated` (offline LiRA, Carlini et al. 2022, as a diffusion-model attack: Carlini et al.
  2023): `count` reference generators are trained with the target's own recipe (config, steps, batch,
  learning rate, DP setting) on cohorts of the same size drawn from the population. For a record x, the
  references' losses estimate what an OUT model scores; the statistic is how far below that mean the
  target's loss lies, in units of their spread: (mean_ref(x) - loss_target(x)) / sd_ref(x).
- `black-box-domias` (DOMIAS, van Breugel et al. 2023): a generator that overfits puts more density on
  its members than the population has there. Gaussian kernel density estimates of the samples and of
  the population, in the same embedding as copying, give log p_samples(x) - log p_population(x).
  DOMIAS fits a normalising flow; kernel densities on a few principal axes are its KDE variant and
  suit the few hundred images an audit has.

Reference generators are ordinary generator runs under `out/references/ref-K/` (each with its own
members.csv naming the population patients it trained on): an interrupted audit resumes them, and
a reference whose run is complete is reused. With DP each reference spends from its own node state
dir under the audit dir (`ref-K/node/`, its cohort's size declared public: the auditor's data), never
from a hospital's ledger.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import gaussian_kde

from fedclip import config as cfglib
from fedclip import io
from fedclip.audits.results import AuditError
from fedclip.data.records import Record, patient_key, write_metadata
from fedclip.generate.train import GeneratorTrainConfig, ensure_generator

REFERENCES_DIR = "references"
KDE_DIMS = 6  # principal axes the densities live on: a kernel estimate degrades fast with dimension
SD_FLOOR_QUANTILE = 0.1  # a record's reference spread is floored at this quantile of all records' spreads


def reference_recipe(target_provenance: dict) -> GeneratorTrainConfig:
    """The target's training recipe, rebuilt through the config tree (a renamed key fails here)."""
    table = target_provenance.get("config")
    if not isinstance(table, dict):
        raise AuditError("the generator's provenance holds no training config; train it again with this fedclip "
                         "to audit it with reference generators")
    return cfglib.build(GeneratorTrainConfig, table, "generator")


def train_reference_generators(target_provenance: dict, hospitals: tuple[str, ...], population: list[Record],
                               population_root: Path, out: Path, *, count: int, seed: int) -> list[Path]:
    """`count` generators trained like the target on cohorts of its size drawn from the population."""
    recipe = reference_recipe(target_provenance)
    by_patient: dict[str, list[Record]] = {}
    for r in population:
        by_patient.setdefault(patient_key(r), []).append(r)
    ids = sorted(by_patient)
    size = int(target_provenance.get("n_patients") or len(ids))
    if len(ids) < max(2, size // 2):
        raise AuditError(f"the population holds {len(ids)} patient(s); reference generators are trained on cohorts "
                         f"like the target's ({size} patients): pass a population of at least {max(2, size // 2)}")
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        chosen = sorted(rng.choice(len(ids), size=min(size, len(ids)), replace=False))
        run = out / REFERENCES_DIR / f"ref-{k}"
        data = run / "data"
        if not (data / "metadata.csv").exists():
            # an index of the population's images where they are: absolute paths, nothing copied
            write_metadata(data, [replace(r, filepath=str(r.path(population_root).resolve()))
                                  for j in chosen for r in by_patient[ids[j]]])
        node = None
        if recipe.epsilon is not None:  # the reference's own node: the auditor's data, its size declared public
            node = run / "node"
            if not (node / "policy.toml").exists():
                io.write_text(node / "policy.toml", f"[policy]\nmax_epsilon = {recipe.epsilon!r}\n"
                              f"delta = {recipe.delta!r}\ndataset_size = {len(chosen)}\n")
        cfg = replace(recipe, data=data, hospitals=hospitals, seed=seed * 1000 + k + 1, save_every=0, state_dir=node)
        paths.append(ensure_generator(cfg, run))
    return paths


def calibrated_loss_score(target: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Offline LiRA on the loss: (mean_ref - target) / sd_ref per record, `references` (records x refs).

    With one reference there is no per-record spread: the spread of the references' losses over all
    records is used instead (the difficulty shift still comes out)."""
    mean = references.mean(axis=1)
    if references.shape[1] >= 2:
        sd = references.std(axis=1, ddof=1)
        sd = np.maximum(sd, np.quantile(sd, SD_FLOOR_QUANTILE) + 1e-12)
    else:
        sd = np.full(len(target), references.std() + 1e-12)
    return (mean - target) / sd


def density_ratio_score(samples: np.ndarray, population: np.ndarray, audited: np.ndarray) -> np.ndarray:
    """log p_samples(x) - log p_population(x) of each audited embedding, on the population's principal axes."""
    dims = int(min(KDE_DIMS, len(population) - 2, len(samples) - 2))
    if dims < 1:
        raise AuditError(f"the density-ratio attack needs at least 3 samples and 3 population images; got "
                         f"{len(samples)} and {len(population)}")
    centre = population.mean(0)
    basis = np.linalg.svd(population - centre, full_matrices=False)[2][:dims].T
    project = lambda x: ((x - centre) @ basis).T  # noqa: E731 - gaussian_kde wants (dims, n)
    p_samples, p_population = gaussian_kde(project(samples)), gaussian_kde(project(population))
    x = project(audited)
    return p_samples.logpdf(x) - p_population.logpdf(x)
