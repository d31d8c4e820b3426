"""Canary exposure (Carlini et al., "The Secret Sharer", 2019) for CLIP models pretrained with canaries.

For each canary (`fedclip.data.canaries`) the target ranks its true secret among candidate secrets by
image -> text similarity (the canary's image against its caption completed with each candidate code).
Exposure = log2 |R| - log2 rank, with the rank in the whole space R estimated from K candidates (the true
secret and K - 1 others drawn without replacement; exact when K = |R|). A model that memorised a canary
ranks its secret first: exposure log2 |R| (13.3 bits for 4 digits); a model that did not averages about
1.44 bits (the mean of log2 |R| - log2 U over uniform ranks).

The figures come per repeat count and against two baselines: the controls (canaries drawn the same way but
never trained on, scored on the same target) and, if given, a reference model that never saw any canary.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import asdict, dataclass
from io import StringIO
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedclip import __version__, evaluate, io, models
from fedclip.audits.results import AuditError, write_results
from fedclip.bootstrap import percentile_interval
from fedclip.data import canaries as canary_lib
from fedclip.progress import progress_bar

EXPOSURE_FILE = "exposure.csv"


@dataclass(frozen=True)
class ExposureConfig:
    candidates: int = 1000  # K secrets ranked per canary, the true one included (max: the whole space)
    seed: int = 0  # the auditor's seed: which candidates, bootstrap
    n_boot: int = 1000
    confidence: float = 0.95


def exposure(true_score: float, other_scores: np.ndarray, space: int) -> float:
    """log2 |R| - log2 rank, the rank in R estimated from the candidates (ties count half)."""
    better = float((other_scores > true_score).sum() + 0.5 * (other_scores == true_score).sum())
    rank = 1.0 + better * (space - 1) / max(len(other_scores), 1)
    return math.log2(space) - math.log2(rank)


@torch.no_grad()
def canary_exposures(vc: models.VisionClip, run: Path, canaries: list[canary_lib.Canary], candidates: int,
                     seed: int) -> np.ndarray:
    """Exposure of every canary's secret under `vc` (same candidate sets for every model: same seed)."""
    images = evaluate.image_embeddings(vc, [run / c.filepath for c in canaries])
    rng = np.random.default_rng([seed, 0xE1])
    out = np.empty(len(canaries))
    k = min(candidates, canary_lib.SPACE) - 1
    with progress_bar("rank canary secrets", len(canaries)) as advance:
        for i, c in enumerate(canaries):
            others = rng.choice(canary_lib.SPACE - 1, k, replace=False)
            others = others + (others >= c.secret)  # every code but the true one
            codes = [c.secret, *others.tolist()]
            texts = torch.cat([evaluate.text_embeddings(vc, [canary_lib.caption_with(c.base_caption, s)
                                                             for s in codes[j:j + 512]])
                               for j in range(0, len(codes), 512)])
            scores = (texts @ images[i]).numpy()
            out[i] = exposure(float(scores[0]), scores[1:], canary_lib.SPACE)
            advance(1)
    return out


def _mean_ci(x: np.ndarray, cfg: ExposureConfig, rng: np.random.Generator) -> dict[str, Any]:
    boots = [rng.choice(x, len(x)).mean() for _ in range(cfg.n_boot)]
    return {"mean": float(x.mean()), "ci": percentile_interval(boots, cfg.confidence), "n": len(x)}


def _gap_ci(a: np.ndarray, b: np.ndarray, cfg: ExposureConfig, rng: np.random.Generator) -> dict[str, Any]:
    """The mean gap, a bootstrap interval to show, and the exact one-sided permutation p-value the verdict
    uses: with 4 canaries a group the bootstrap interval said "memorised" in 7% of null audits against a
    promised 2.5%; relabelling planted and control canaries is exact at any size (every split enumerated
    while there are at most 20,000, Monte Carlo beyond)."""
    from scipy.stats import permutation_test

    boots = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(cfg.n_boot)]
    if min(len(a), len(b)) >= 2:
        p = float(permutation_test((a, b), lambda x, y: np.mean(x) - np.mean(y), alternative="greater",
                                   n_resamples=20_000, rng=rng).pvalue)
    else:  # scipy refuses a sample of one; every relabelling is then just which item is the odd one out
        pooled, k = np.r_[a, b], len(a)
        gaps = [pooled[list(c)].mean() - np.delete(pooled, list(c)).mean()
                for c in combinations(range(len(pooled)), k)]
        p = float(np.mean(np.asarray(gaps) >= a.mean() - b.mean() - 1e-12))
    return {"gap": float(a.mean() - b.mean()), "ci": percentile_interval(boots, cfg.confidence),
            "p_value": p, "smallest_p": 1 / math.comb(len(a) + len(b), len(a)),
            "test": "one-sided permutation test of the mean gap"}


def run_exposure(target: str | Path, run: str | Path, reference: str | Path | None, cfg: ExposureConfig,
                 out: str | Path) -> dict[str, Any]:
    target, run, out = Path(target), Path(run), Path(out)
    planted = canary_lib.read(run)
    if not any(c.repeats for c in planted) or all(c.repeats for c in planted):
        raise AuditError(f"{run / canary_lib.CANARIES_FILE} needs planted canaries and never-trained controls "
                         "(repeats 0); it was not written by `fedclip pretrain --canaries N`")
    if cfg.candidates < 2:
        raise AuditError(f"--candidates {cfg.candidates}: rank the secret among at least 2 candidates")
    checkpoint = models.read_checkpoint_config(target)
    sha = (checkpoint.get("provenance") or {}).get("canaries_sha256")
    warnings = []
    if sha is None:
        warnings.append(f"the target's provenance does not name {run / canary_lib.CANARIES_FILE}: it may not be "
                        "the model this run trained")
    elif sha != hashlib.sha256((run / canary_lib.CANARIES_FILE).read_bytes()).hexdigest():
        raise AuditError(f"{run / canary_lib.CANARIES_FILE} is not the canary list the target was trained with "
                         "(SHA-256 differs from its provenance); audit the checkpoint with its own run dir")
    models_scored = {"target": target} | ({"reference": Path(reference)} if reference else {})
    exposures = {name: canary_exposures(models.load_checkpoint(path), run, planted, cfg.candidates, cfg.seed)
                 for name, path in models_scored.items()}
    repeats = np.array([c.repeats for c in planted])
    rng = np.random.default_rng(cfg.seed)
    groups: dict[str, Any] = {}
    controls = exposures["target"][repeats == 0]
    for r in sorted(set(repeats.tolist())):
        idx = repeats == r
        g: dict[str, Any] = {name: _mean_ci(e[idx], cfg, rng) for name, e in exposures.items()}
        if r > 0:
            g["gap_to_controls"] = _gap_ci(exposures["target"][idx], controls, cfg, rng)
            if reference:
                g["gap_to_reference"] = _gap_ci(exposures["target"][idx], exposures["reference"][idx], cfg, rng)
        groups[str(r)] = g
    planted_groups = [r for r in groups if r != "0"]
    alpha = (1 - cfg.confidence) / max(1, len(planted_groups))  # Bonferroni over the repeat counts tested
    memorised = [r for r in planted_groups if groups[r]["gap_to_controls"]["p_value"] < alpha]
    blind = [r for r in planted_groups if groups[r]["gap_to_controls"]["smallest_p"] >= alpha]
    if blind:
        warnings.append(f"repeats {', '.join(blind)}: too few canaries for any result to reach p < {alpha:.3g} "
                        "against the controls (an exact test cannot go below 1 / C(planted + controls, planted)); "
                        "plant more canaries (--canaries)")
    k = min(cfg.candidates, canary_lib.SPACE)
    resolution = math.log2(canary_lib.SPACE) - math.log2(1 + (canary_lib.SPACE - 1) / max(k - 1, 1))
    if k < canary_lib.SPACE:
        warnings.append(f"ranks are estimated from {k} of {canary_lib.SPACE} candidates: a secret ranked first "
                        f"among them lies somewhere in the top {(canary_lib.SPACE - 1) / (k - 1) + 1:.0f}, so "
                        f"exposures above {resolution:.1f} bits are not resolved (and read high near the top); "
                        f"--candidates {canary_lib.SPACE} ranks exactly")
    rows = StringIO(newline="")
    w = csv.writer(rows)
    w.writerow(["canary", "patient_id", "repeats", *[f"exposure_{n}" for n in exposures]])
    for i, c in enumerate(planted):
        w.writerow([c.filepath, c.patient_id, c.repeats, *[f"{e[i]:.4f}" for e in exposures.values()]])
    doc = {
        "kind": "exposure", "fedclip_version": __version__,
        "target": {"checkpoint": str(target), "model": checkpoint.get("model"),
                   "weights_sha256": checkpoint.get("weights_sha256"),
                   "stage": (checkpoint.get("provenance") or {}).get("stage", "unknown")},
        "reference": str(reference) if reference else None, "run": str(run), "config": asdict(cfg),
        "space": canary_lib.SPACE, "max_exposure": math.log2(canary_lib.SPACE),
        "n_planted": int((repeats > 0).sum()), "n_controls": int((repeats == 0).sum()),
        "by_repeats": groups, "memorised_at_repeats": memorised, "warnings": warnings,
        "decision": f"one-sided permutation p-value below {alpha:.4g} ({1 - cfg.confidence:g} split over "
                    f"{len(planted_groups)} repeat counts)", "resolved_bits": resolution if k < canary_lib.SPACE
        else math.log2(canary_lib.SPACE),
        "method": (f"image -> text similarity rank of the true {canary_lib.DIGITS}-digit code among "
                   f"{min(cfg.candidates, canary_lib.SPACE)} candidates, rank in the space of {canary_lib.SPACE} "
                   "estimated linearly; controls: canaries drawn the same way, never trained on"),
    }
    io.write_text(out / EXPOSURE_FILE, rows.getvalue())
    write_results(out, doc, {"target": str(target.resolve()), "run": str(run.resolve()),
                             "reference": str(Path(reference).resolve()) if reference else None})
    return doc
