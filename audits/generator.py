"""Does a learned generator copy the patients it was trained on? The ethics board's question, measured.

Four answers, each at the patient level (a patient's images are one unit) and each against fresh
patients of the same population (the holdout, never seen by the generator) as the baseline:

- white-box membership inference: a record's denoising loss, averaged over fixed timesteps and noise
  draws (the same draws for every record), is lower for what the model was trained on; the patient's
  score is the mean over their images (Carlini et al. 2023, "Extracting training data from diffusion
  models", and the loss attack of Yeom et al.). AUC and TPR at low FPR with bootstrap CIs over patients;
- black-box membership inference from samples alone: a patient's distance to the closest generated
  image (in the copying embedding); members of a copying generator sit closer (the DCR attack);
- copying of the samples (`fedclip.audits.copying`): DCR share, Meehan's C_T, flagged near-copies, in an
  embedding that keys on the anatomy (vessel tree, disc) by default, and the number of near-copies of each
  training patient among the samples (ordinal labels unless `show_patients`: ids are private);
- fidelity: the Fréchet distance between samples and fresh patients in the same embedding, beside the
  distance between the training patients and fresh patients (what a perfect generator would score).

With a population (a third set of patients the generator never saw, the auditor's own), two attacks
take the difficulty of each image out (`fedclip.audits.generator_calibration`): the white-box loss
calibrated against reference generators trained like the target (offline LiRA), and the black-box
density ratio of samples to population (DOMIAS).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg

from fedclip import __version__, io, models
from fedclip.audits import attacks, bounds, metrics
from fedclip.audits.copying import (
    ANATOMY,
    COPIES_FILE,
    IDENTITY_VIEW,
    PIXELS,
    CopyingConfig,
    model_embedding,
    nearest,
    pixel_embedding,
    run_copying,
)
from fedclip.audits.mia import check_manifest
from fedclip.audits.results import SCORES_FILE, AuditError, data_fingerprint, write_results
from fedclip.data.records import Record, patient_key, read_metadata
from fedclip.generate.model import Generator, load_generator, read_generator_config
from fedclip.generate.sample import SampleConfig, sample_dataset
from fedclip.generate.train import denoising_loss, load_images
from fedclip.progress import progress_bar

SAMPLES_DIR = "samples"
FRECHET_DIMS = 16
MIN_PATIENTS = 10  # fewer members or fresh patients: the bootstrap CI is not trusted for a verdict
COPYING_DIR = "copying"


@dataclass(frozen=True)
class GeneratorAuditConfig:
    n_samples: int = 256  # generated images for the black-box attack, copying and fidelity
    sample_steps: int = 50  # DDIM steps
    timesteps: tuple[int, ...] = (10, 50, 100, 200, 400)  # where the white-box loss is read
    draws: int = 4  # noise draws per timestep and image (the same for every record)
    embed: str = ANATOMY  # anatomy | pixels: the space of copying, black-box distances and fidelity
    alpha: float = 0.005  # copying's flag rate for fresh patients
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0  # the auditor's: sampling, noise draws, bootstrap
    show_patients: bool = False  # per-patient copy counts name patient ids (else ordinal labels)
    refs: int = 2  # reference generators for the calibrated white-box attack (with a population; 0: none)


@torch.no_grad()
def loss_signal(gen: Generator, images: torch.Tensor, cond: torch.Tensor, *, timesteps: tuple[int, ...],
                draws: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """Each image's denoising loss, averaged over `timesteps` x `draws` fixed noise draws."""
    acp = gen.schedule().alphas_cumprod.float()
    gen_noise = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(timesteps) * draws, *images.shape[1:]), generator=gen_noise)
    total = np.zeros(len(images))
    with progress_bar("white-box signal", len(images)) as advance:
        for lo in range(0, len(images), batch_size):
            x, c = images[lo:lo + batch_size], cond[lo:lo + batch_size]
            for j, t in enumerate(np.repeat(timesteps, draws)):
                tt = torch.full((len(x),), int(t))
                total[lo:lo + len(x)] += denoising_loss(gen, x, tt, noise[j].expand_as(x), c, acp,
                                                           gen.prediction).numpy()
            advance(len(x))
    return total / (len(timesteps) * draws)


def frechet_distance(a: np.ndarray, b: np.ndarray, basis: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (as FID), in the `basis` directions.

    A covariance needs more samples than dimensions; the embeddings have thousands, the audit a few
    hundred images, so both sets are projected on the same principal axes of the real images first."""
    a, b = a @ basis, b @ basis
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * np.real(root)))


def _embedder(embed: str) -> Callable[[list[Path], bool], np.ndarray]:
    """`embed(paths, aligned)`: (n, d), or (n, views, d) aligned over small shifts and rotations for the
    image-space embeddings; a CLIP checkpoint's image tower (loaded once) has no aligned views (it is meant
    to be invariant to such moves)."""
    if embed in (ANATOMY, PIXELS):
        return lambda paths, aligned: pixel_embedding(paths, aligned=aligned, anatomy=embed == ANATOMY)
    vc = models.load_checkpoint(embed)
    return lambda paths, aligned: model_embedding(vc, paths)


def _identity(views: np.ndarray) -> np.ndarray:
    return views[:, IDENTITY_VIEW] if views.ndim == 3 else views


def _patients(records: list[Record]) -> list[str]:
    return [patient_key(r) for r in records]


def run_generator_audit(checkpoint: str | Path, members: str | Path, holdout: str | Path, out: str | Path,
                        cfg: GeneratorAuditConfig, population: str | Path | None = None) -> dict[str, Any]:
    """Audit a generator checkpoint against its training patients and fresh ones; write `out`. With a
    `population` (patients in neither set nor the generator's manifest), also the calibrated attacks."""
    checkpoint, out = Path(checkpoint), Path(out)
    if cfg.refs < 0:
        raise AuditError(f"--refs {cfg.refs}: pass 0 (no reference generators) or more")
    if cfg.embed not in (ANATOMY, PIXELS) and not (Path(cfg.embed) / "config.json").is_file():
        raise AuditError(f"--embed {cfg.embed!r}: use anatomy, pixels or a CLIP checkpoint dir (its image tower)")
    if cfg.n_samples < 2:
        raise AuditError("--n-samples must be at least 2")
    gcfg = read_generator_config(checkpoint)
    provenance = gcfg["provenance"]
    roots = Path(members), Path(holdout)
    mem, hold = read_metadata(roots[0]), read_metadata(roots[1])
    if len(mem) < 2 or len(hold) < 2:
        raise AuditError("the generator audit needs at least 2 images among the members and among the holdout")
    manifest = check_manifest(checkpoint, provenance, mem, hold)
    pm, ph = _patients(mem), _patients(hold)
    shared = sorted(set(pm) & set(ph))
    if shared:
        raise AuditError(f"members and holdout share {len(shared)} patient(s); the holdout must be patients the "
                         "generator never saw")
    pop_root = Path(population) if population else None
    pop = read_metadata(pop_root) if pop_root else []
    if pop_root:
        overlap = sorted(set(_patients(pop)) & (set(pm) | set(ph)))
        if overlap:
            raise AuditError(f"the population shares {len(overlap)} patient(s) with the members or the holdout; pass "
                             "patients the audit does not score and the generator never saw")
        check_manifest(checkpoint, provenance, [], pop)  # not one population record trained the generator
    gen = load_generator(checkpoint)
    audited = mem + hold
    patients = pm + ph
    images = torch.cat([load_images(mem, roots[0], gen.image_size), load_images(hold, roots[1], gen.image_size)])
    cond = gen.conditioning.vectors([r.labels for r in audited], [r.meta.get("hospital") for r in audited])
    loss = loss_signal(gen, images, cond, timesteps=cfg.timesteps, draws=cfg.draws, seed=cfg.seed)

    # samples, copying, black-box distances, fidelity
    samples = sample_dataset(checkpoint, out / SAMPLES_DIR, SampleConfig(n=cfg.n_samples, seed=cfg.seed,
                                                                         steps=cfg.sample_steps))
    copying = run_copying(samples, roots[0], roots[1], CopyingConfig(embed=cfg.embed, alpha=cfg.alpha,
                                                                     seed=cfg.seed), out / COPYING_DIR)
    syn_records = read_metadata(samples)
    embed = _embedder(cfg.embed)
    syn = embed([r.path(samples) for r in syn_records], False)
    real_views = embed([r.path(roots[0]) for r in mem] + [r.path(roots[1]) for r in hold], True)
    distance, _ = nearest(real_views, syn)
    real = _identity(real_views)
    dims = int(min(FRECHET_DIMS, len(mem) - 1, len(hold) - 1, len(syn) - 1))
    centred = real - real.mean(0)
    basis = np.linalg.svd(centred, full_matrices=False)[2][:max(1, dims)].T
    fidelity = {"embedding": copying["embedding"], "dimensions": int(basis.shape[1]),
                "frechet_samples_to_holdout": frechet_distance(syn, real[len(mem):], basis),
                "frechet_members_to_holdout": frechet_distance(real[:len(mem)], real[len(mem):], basis),
                "note": f"Fréchet distance of Gaussians fitted on the {basis.shape[1]} principal axes of the real "
                        "images in this embedding (not Inception FID); the members-to-holdout figure is what a "
                        "generator reproducing the population would score"}

    scores = {"white-box-loss": -loss, "black-box-dcr": -distance}
    signal = {"white-box-loss": f"minus the denoising MSE averaged over timesteps {list(cfg.timesteps)} x "
                                f"{cfg.draws} fixed noise draws, a patient's mean over their images",
              "black-box-dcr": f"minus a patient's smallest distance to any of {cfg.n_samples} samples "
                               f"({copying['embedding']})"}
    references: dict[str, Any] | None = None
    if pop_root:
        from fedclip.audits import generator_calibration as calib

        pop_emb = embed([r.path(pop_root) for r in pop], False)
        scores["black-box-domias"] = calib.density_ratio_score(syn, pop_emb, real)
        signal["black-box-domias"] = (f"log density of the {cfg.n_samples} samples minus log density of the "
                                      f"{len(pop)} population images at the record (Gaussian kernels on "
                                      f"{calib.KDE_DIMS} principal axes of the population, "
                                      f"{cfg.embed if cfg.embed in (ANATOMY, PIXELS) else 'CLIP image'} embedding)")
        if cfg.refs:
            ref_paths = calib.train_reference_generators(provenance, gen.conditioning.hospitals, pop, pop_root, out,
                                                         count=cfg.refs, seed=cfg.seed)
            ref_loss = np.stack([loss_signal(load_generator(p), images, cond, timesteps=cfg.timesteps,
                                             draws=cfg.draws, seed=cfg.seed) for p in ref_paths], axis=1)
            scores["white-box-calibrated"] = calib.calibrated_loss_score(loss, ref_loss)
            signal["white-box-calibrated"] = (
                f"offline LiRA: (mean - target) / sd of the same loss under {cfg.refs} reference generator(s) "
                f"trained with the target's recipe on {len(pop)}-image population cohorts of its size")
            references = {"count": cfg.refs, "dir": str(out / calib.REFERENCES_DIR),
                          "recipe": "the target's config, steps, batch size, learning rate and DP setting; "
                                    "cohorts of the target's size drawn from the population"}

    attacks_out: dict[str, Any] = {}
    rows = StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["patient", "member", "attack", "score"])
    labels = _labels(patients, cfg.show_patients)
    for name, score in scores.items():
        ids, pscore = attacks.patient_scores(score, patients)
        pmember = np.array([int(i in set(pm)) for i in ids])
        entry = metrics.summarise(pmember, pscore, n_boot=cfg.n_boot, seed=cfg.seed, confidence=cfg.confidence,
                                  family=len(scores))  # the verdict reads every attack: simultaneous intervals
        entry["roc"] = metrics.roc(pmember, pscore)
        attacks_out[name] = {"patient": entry}
        for i, s, m in zip(ids, pscore, pmember, strict=True):
            writer.writerow([labels[i], int(m), name, f"{s:.6g}"])

    copies_per_patient = _copies_per_patient(out / COPYING_DIR / COPIES_FILE, mem, pm, labels)
    cautions = [c for c in [copying["verdict"].get("caution")] if c]
    few = min(len(set(pm)), len(set(ph))) < MIN_PATIENTS
    leaks = [] if few else [
        f"{n} membership AUC {e['auc']:.2f} (CI {e['ci']['auc'][0]:.2f}-{e['ci']['auc'][1]:.2f}) excludes 0.5"
        for n, e in ((n, a["patient"]) for n, a in attacks_out.items()) if e["ci"]["auc"][0] > 0.5]
    privacy = provenance.get("privacy") or {}
    ceiling = None
    if privacy.get("dp") and privacy.get("epsilon") is not None:
        ceiling = bounds.dp_claim_ceiling(float(privacy["epsilon"]), float(privacy.get("delta") or 0.0),
                                          privacy.get("unit", "patient"))
        above = [] if few else [n for n, a in attacks_out.items() if a["patient"]["ci"]["auc"][0] > ceiling["auc"]]
        leaks += [f"{n} membership AUC above the {ceiling['auc']:.3f} that {ceiling['claim']} permits any attack: "
                  "the DP claim is contradicted" for n in above]
    if few:
        cautions.append(f"{len(set(pm))} trained and {len(set(ph))} fresh patients: too few (< {MIN_PATIENTS} each) "
                        "for the membership CIs to carry a verdict; the AUCs are shown, not judged")
    reasons = copying["verdict"]["reasons"] + leaks
    doc = {
        "kind": "generator", "fedclip_version": __version__, "level": "patient",
        "target": {"checkpoint": str(checkpoint), "model": gcfg["model"], "weights_sha256": gcfg["weights_sha256"],
                   "stage": "generator", "privacy": provenance.get("privacy"), "steps": provenance.get("steps"),
                   "n_patients_trained": provenance.get("n_patients"),
                   "label_statistics_privacy": gcfg["label_statistics"].get("privacy")},
        "data": {"members": str(roots[0]), "holdout": str(roots[1]), "n_member_patients": len(set(pm)),
                 "n_holdout_patients": len(set(ph)), "n_samples": cfg.n_samples,
                 "population": str(pop_root) if pop_root else None,
                 "n_population_patients": len(set(_patients(pop))) if pop_root else None},
        "config": asdict(cfg), "manifest": manifest, "signal": signal, "references": references,
        "attacks": attacks_out,
        "copying": {k: copying[k] for k in ("embedding", "dcr", "three_sample_test", "flags", "verdict")},
        "copies_per_patient": copies_per_patient, "fidelity": fidelity, "dp_ceiling": ceiling,
        "verdict": {"copies": bool(reasons), "reasons": reasons, "caution": "; ".join(cautions) or None},
    }
    io.write_text(out / SCORES_FILE, rows.getvalue())
    write_results(out, doc, {"generator": str(checkpoint.resolve()), "members": data_fingerprint(roots[0], mem),
                             "holdout": data_fingerprint(roots[1], hold),
                             **({"population": data_fingerprint(pop_root, pop)} if pop_root else {})})
    return doc


def _labels(patients: list[str], show: bool) -> dict[str, str]:
    """How a patient is named in the results: their id only when asked for, else an ordinal."""
    order = sorted(set(patients))
    return {p: p if show else f"patient #{i + 1}" for i, p in enumerate(order)}


def _copies_per_patient(copies_csv: Path, members: list[Record], patients: list[str],
                        labels: dict[str, str]) -> dict[str, Any]:
    """For each training patient, how many samples were flagged as near-copies of one of their images."""
    by_path = {r.filepath: p for r, p in zip(members, patients, strict=True)}
    counts: Counter[str] = Counter()
    with open(copies_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["flagged"] == "1" and row["nearest_train"] in by_path:
                counts[labels[by_path[row["nearest_train"]]]] += 1
    copied = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return {"patients_with_copies": len(copied), "of_patients": len(set(patients)), "counts": copied}
