"""Membership inference, end to end: target + members + non-members (+ population) -> results.json.

    target checkpoint ──► signal per record ──► attack scores ──► ROC / AUC / TPR@FPR with CIs
                              ▲                      ▲
          members, non-members, population      reference models (fine-tuned targets)

Two kinds of target, told apart by the checkpoint's provenance:
- a federation's checkpoint (stage "federate"): a fine-tuned classification head; signal = the logit
  margin of the true class; LiRA and RMIA use reference heads fine-tuned from the same base
  checkpoint with the federation's settings (centralised, epochs = local epochs x rounds, DP as
  configured) on complementary random halves of audited + population records;
- any other checkpoint (pretraining): a CLIP model; signal = image-caption similarity; the loss
  attack only (reference *pretraining* runs cost minutes each: see docs/audits.md).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedclip import __version__, io, models, tasks
from fedclip.audits import attacks, bounds, metrics
from fedclip.audits.confound import confound_check
from fedclip.audits.references import train_references
from fedclip.audits.results import SCORES_FILE, AuditError, TargetPrivacy, data_fingerprint, write_results
from fedclip.audits.signals import clip_signals, head_signals
from fedclip.data.records import Record, fingerprint, normalise_patient_id, read_manifest, read_metadata
from fedclip.finetune import FinetuneConfig, load_pixels, prefix_tokens
from fedclip.run import EPSILON_PER_NODE

ATTACKS = ("loss", "lira", "lira-offline", "rmia", "rmia-offline")


MIN_LIRA_REFS = 4  # complementary pairs: each record IN 2 and OUT of 2, so a (pooled) spread exists


@dataclass(frozen=True)
class MiaConfig:
    attacks: tuple[str, ...] = ("loss", "lira", "rmia")
    refs: int = 8  # reference models (fine-tuned targets)
    level: str = "auto"  # patient | image | auto (patient where every record has a patient id)
    seed: int = 0  # the auditor's randomness: reference splits, bootstrap
    n_boot: int = 500
    confidence: float = 0.95
    gamma: float = 1.0  # RMIA
    offline_a: float = 0.3  # RMIA offline
    workers: int = 1  # reference models trained in parallel on Ray by this many worker processes (1: in-process)
    views: int = 1  # CLIP targets: augmented views averaged into the signal
    # training: the members trained the target (checked against its member manifest); generator: they
    # reached it only through a synthetic corpus fitted to them (a synthetic-data model audited against the
    # cohort its generator learned from), so no manifest can list them
    members_via: str = "training"


def _patients(records: list[Record]) -> set[str]:
    return {normalise_patient_id(r.meta.get("patient_id")) for r in records} - {""}


def check_sets(members: list[Record], nonmembers: list[Record], population: list[Record]) -> None:
    if not members or not nonmembers:
        raise AuditError("an audit needs members and non-members; one of the sets is empty")
    overlap = sorted(_patients(members) & _patients(nonmembers))
    if overlap:
        raise AuditError(f"members and non-members share {len(overlap)} patient(s) ({', '.join(overlap[:5])}); "
                         "split by patient so that no patient is on both sides")
    overlap = sorted(_patients(members) & _patients(population))
    if overlap:
        raise AuditError(f"the population shares {len(overlap)} patient(s) with the members "
                         f"({', '.join(overlap[:5])}); use population records no target ever trained on")


def check_manifest(target: Path, provenance: dict[str, Any], members: list[Record],
                   nonmembers: list[Record]) -> dict[str, Any]:
    """Members must be in the target's member manifest and non-members must not (when it has one)."""
    name = provenance.get("members")
    if not name:
        return {"checked": False, "warning": "the target records no member manifest (a federation's nodes keep "
                "theirs); membership of the audited records is taken on trust"}
    path = target.parent.parent / name
    if not path.exists():
        raise AuditError(f"{target} names the member manifest {path}, which is missing; audit the checkpoint "
                         "inside its run dir")
    if hashlib.sha256(path.read_bytes()).hexdigest() != provenance.get("members_sha256"):
        raise AuditError(f"{path} does not match the SHA-256 in the checkpoint's provenance; it was altered")
    # a record is known by its path *and* patient: two dataset dirs both hold images/0000/00000000.png
    listed = {(row["filepath"], row.get("patient_id", "")) for row in read_manifest(path)}

    def key(r: Record) -> tuple[str, str]:
        return r.filepath, str(r.meta.get("patient_id", ""))

    missing = [r.filepath for r in members if key(r) not in listed]
    if missing:
        raise AuditError(f"{len(missing)} member(s) are not in the target's manifest {path} (e.g. {missing[0]}); "
                         "pass as members only records that trained the target")
    wrong = [r.filepath for r in nonmembers if key(r) in listed]
    if wrong:
        raise AuditError(f"{len(wrong)} non-member(s) are in the target's manifest {path} (e.g. {wrong[0]}); "
                         "they trained the target")
    return {"checked": True, "manifest": str(path), "members_sha256": provenance.get("members_sha256")}


def finetune_settings(fed: dict[str, Any]) -> FinetuneConfig:
    """The fine-tuning one node runs over a whole federation, in one go, from a federation's resolved
    `[federate]` table (a checkpoint's provenance or a run's config.toml: every default written out)."""
    from fedclip import config as cfglib
    from fedclip.federated.config import FederateConfig

    if not isinstance(fed.get("finetune"), dict) or "rounds" not in fed:
        raise AuditError("the federation's settings have no [federate.finetune] table: it was run by an older "
                         "fedclip; federate again with this version to audit it")
    federation = cfglib.build(FederateConfig, {"rounds": fed["rounds"], "finetune": fed["finetune"]}, "federate")
    # per image: the reference and canary trainers have no patient grouping (yet); results say "per image"
    return replace(federation.per_node(), unit="image")


def run_mia(target: str | Path, members: str | Path, nonmembers: str | Path, population: str | Path | None,
            cfg: MiaConfig, out: str | Path, advance: Callable[..., None] | None = None) -> dict[str, Any]:
    target, out = Path(target), Path(out)
    if cfg.refs < 2 or cfg.refs % 2:
        raise AuditError(f"--refs {cfg.refs}: reference models come in complementary pairs; pass an even number >= 2")
    if cfg.refs < MIN_LIRA_REFS and set(cfg.attacks) <= {"lira", "lira-offline"}:
        raise AuditError(f"--refs {cfg.refs}: LiRA needs at least {MIN_LIRA_REFS} reference models; pass --refs "
                         f"{MIN_LIRA_REFS} or add --attack rmia (which works with 2)")
    unknown = sorted(set(cfg.attacks) - set(ATTACKS))
    if unknown:
        raise AuditError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    checkpoint = models.read_checkpoint_config(target)
    provenance = checkpoint.get("provenance", {})
    roots = (Path(members), Path(nonmembers), Path(population) if population else None)
    mem, non = read_metadata(roots[0]), read_metadata(roots[1])
    pop = read_metadata(roots[2]) if roots[2] else []
    check_sets(mem, non, pop)
    if cfg.members_via == "generator":
        manifest = {"checked": False, "warning": "the members reached the target only through the synthetic corpus "
                    "its generator drew from their statistics; no manifest lists them"}
    elif cfg.members_via == "training":
        manifest = check_manifest(target, provenance, mem, non)
    else:
        raise AuditError(f"members_via {cfg.members_via!r}: use training or generator")
    warnings = [manifest["warning"]] if "warning" in manifest else []
    confound = confound_check(mem, non, roots[:2], cfg.seed)
    if confound.get("confounded"):
        warnings.append(f"members and non-members differ in what the model should not care about (blind-baseline "
                        f"AUC {confound['auc']:.2f}, {_interval(confound)}): the attack figures are confounded by "
                        "distribution shift")
    vc = models.load_checkpoint(target)
    head_target = provenance.get("stage") == "federate"
    audited = mem + non
    audited_roots = [roots[0]] * len(mem) + [roots[1]] * len(non)
    member = np.array([1] * len(mem) + [0] * len(non))
    info: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    if head_target:
        fed = provenance["federate"]
        ft = finetune_settings(fed)
        keep, y = tasks.labelled([r.labels for r in audited], ft.task)
        pkeep, py = tasks.labelled([r.labels for r in pop], ft.task, required=False) if pop else ([], np.zeros(0))
        if len(keep) < len(audited):
            warnings.append(f"{len(audited) - len(keep)} audited record(s) have no {ft.task} label and were left out")
        audited_roots = [audited_roots[i] for i in keep]
        audited = [audited[i] for i in keep]
        member = member[keep]
        pop = [pop[i] for i in pkeep]
        pixels = load_pixels(vc, [r.path(root) for r, root in zip(audited, audited_roots, strict=True)]
                             + [r.path(roots[2]) for r in pop])
        tokens = prefix_tokens(vc, pixels, ft.train_blocks)  # the prefix is frozen: the base's and the target's
        targets = torch.from_numpy(np.concatenate([y, py]).astype(np.int64))
        margin, prob = head_signals(vc, tokens, targets, ft)
        if not np.isfinite(margin).all():
            raise AuditError(f"the target's outputs are not finite for {int((~np.isfinite(margin)).sum())} record(s): "
                             "its weights diverged (NaN); audit a checkpoint that trained properly")
        n = len(audited)
        signal = "logit margin of the true class, log p_y - log sum_{y' != y} p_y' (LiRA's stable signal)"
        scores["loss"] = attacks.loss_attack(margin[:n])
        wants_refs = any(a != "loss" for a in cfg.attacks)
        if wants_refs:
            base = models.load_checkpoint(fed["checkpoint"])
            data_fp = fingerprint(audited + pop)
            # references train on complementary halves of audited + population records, so every record
            # (x and RMIA's z alike) is IN half of them and OUT of the other half
            ref_m, ref_p, ref_in = train_references(
                base, tokens, targets, ft, count=cfg.refs, seed=cfg.seed, data_fingerprint=data_fp,
                cache=out / "refs", workers=cfg.workers, advance=advance)
            global_std = cfg.refs < 16
            info = {"count": cfg.refs, "how": "fine-tuned from the target's base checkpoint with the federation's "
                    f"settings (centralised, {ft.epochs} epochs, dp={ft.dp}, epsilon={ft.epsilon}) on complementary "
                    "random halves of audited + population records", "base": str(fed["checkpoint"]),
                    "split_seed": cfg.seed,
                    "variance": "global" if global_std else "per record", "finetune": asdict(ft)}
            lira_asked = [a for a in ("lira", "lira-offline") if a in cfg.attacks]
            if lira_asked and cfg.refs < MIN_LIRA_REFS:
                # with 2 references each record is IN one and OUT of the other: no spread can be estimated,
                # the fitted deviation collapses to its floor and the scores run to +-1e12
                warnings.append(f"{', '.join(lira_asked)} not run: LiRA needs at least {MIN_LIRA_REFS} reference "
                                f"models (--refs {cfg.refs}); RMIA works with 2")
                lira_asked = []
            if "lira" in lira_asked:
                scores["lira"] = attacks.lira(margin[:n], ref_m[:n], ref_in[:n], online=True, global_std=global_std)
            if "lira-offline" in lira_asked:
                scores["lira-offline"] = attacks.lira(margin[:n], ref_m[:n], ref_in[:n], online=False,
                                                      global_std=global_std)
            for name in ("rmia", "rmia-offline"):
                if name not in cfg.attacks:
                    continue
                if not pop:
                    warnings.append(f"{name} not run: it needs --population records")
                    continue
                # the same estimate of Pr(.) for x and z: all references (online), or OUT ones only (offline)
                if name == "rmia":
                    px, pz = attacks.prior_online(ref_p[:n]), attacks.prior_online(ref_p[n:])
                else:
                    px = attacks.prior_offline(ref_p[:n], ~ref_in[:n], cfg.offline_a)
                    pz = attacks.prior_offline(ref_p[n:], ~ref_in[n:], cfg.offline_a)
                scores[name] = attacks.rmia(prob[:n], px, prob[n:], pz, gamma=cfg.gamma)
    else:
        signal = "cosine similarity of each image with its own caption" + (
            f", averaged over {cfg.views} augmented views" if cfg.views > 1 else "")
        sim = clip_signals(vc, [r.path(root) for r, root in zip(audited, audited_roots, strict=True)],
                           [r.caption for r in audited], views=cfg.views, seed=cfg.seed)
        scores["loss"] = attacks.loss_attack(sim)
        skipped = [a for a in cfg.attacks if a != "loss"]
        if skipped:
            warnings.append(f"{', '.join(skipped)} not run: a CLIP (pretrained) target supports the loss attack "
                            "(reference pretraining runs are out of a CPU budget; see docs/audits.md)")
    return _write(target, checkpoint, provenance, cfg, out, audited, member, scores, signal, info, manifest,
                  confound, warnings, roots, len(pop))


def strongest_attack(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The attack with the highest AUC at the audit's level, and its entry (intervals are simultaneous)."""
    level = doc["level"]
    return max(((a, e[level]) for a, e in doc["attacks"].items()), key=lambda x: x[1]["auc"])


MIN_PER_SIDE = 10  # fewer members or non-members at the audited level: the AUCs are shown, not judged


def _interval(confound: dict[str, Any]) -> str:
    if "ci" in confound:
        lo, hi = confound["ci"]
        return f"{confound.get('confidence', 0.95):.0%} interval {lo:.3f}-{hi:.3f}, above 0.5"
    return f"above {confound.get('threshold', 0.6)}"  # audits written before the blind baseline had an interval


def dp_ceiling(target: dict[str, Any], level: str) -> dict[str, Any] | None:
    """The largest AUC the target's DP claim allows at this level, or None where it bounds nothing: no DP,
    or image-level DP judged per patient (a patient of g images is protected only at g·ε)."""
    privacy = TargetPrivacy.from_json(target)
    if privacy.dp is not True or privacy.epsilon_budget is None or (privacy.unit == "image" and level != "image"):
        return None
    return bounds.dp_claim_ceiling(privacy.epsilon_budget, privacy.delta or 0.0, str(privacy.unit))


def verdict(doc: dict[str, Any]) -> dict[str, Any]:
    """What the figures support, weighing the audit's own checks: a confound means the attack cannot be told
    from distribution shift; an AUC significantly below 0.5 is a shift or a flipped score, never leakage;
    the strongest attack is judged with its simultaneous (Bonferroni) interval; a TPR is quoted only at the
    finest FPR the non-members resolve."""
    level, confound = doc["level"], doc["confound"]
    name, e = strongest_attack(doc)
    lo, hi = e["ci"]["auc"]
    k = e["family"]
    how = (f"{e['confidence']:.0%} confidence interval {lo:.3f}-{hi:.3f}"
           + (f", simultaneous over {k} attacks" if k > 1 else ""))
    blind = confound.get("auc")
    below = [a for a, x in doc["attacks"].items() if x[level]["ci"]["auc"][1] < 0.5]
    strongest = f"the strongest attack ({name}) reached AUC {e['auc']:.3f} ({how})"
    if min(e["n_members"], e["n_nonmembers"]) < MIN_PER_SIDE:
        return {"answer": "too few", "attack": name, "text": (
            f"not decided: {e['n_members']} members and {e['n_nonmembers']} non-members at the {level} level are "
            f"too few (< {MIN_PER_SIDE} a side) for an interval to carry a verdict; {strongest}")}
    if confound.get("confounded"):
        return {"answer": "confounded", "attack": name, "text": (
            f"these figures cannot separate leakage from distribution shift: a classifier that never sees the "
            f"model tells members from non-members by metadata and image statistics alone (blind-baseline AUC "
            f"{blind:.3f}, {_interval(confound)}), and {strongest}. Audit again with non-members matched to the "
            "members (same hospitals, cameras and visit mix, patients the model never saw)")}
    ceiling = dp_ceiling(doc.get("target") or {}, level)
    if ceiling is not None and lo > ceiling["auc"]:
        return {"answer": "contradicts DP", "attack": name, "text": (
            f"the DP claim is contradicted: {strongest}, above the AUC {ceiling['auc']:.3f} that {ceiling['claim']} "
            "permits any attack. Check the mechanism (`fedclip audit epsilon --power`) and the member sets")}
    if lo > 0.5:
        f = metrics.finest_fpr(e)
        tpr = (f"; it identified {e[metrics.tpr_key(f)]:.1%} of members at a {f:.1%} false-positive rate (the finest "
               f"rate {e['n_nonmembers']} non-members resolve)" if f is not None else
               f"; {e['n_nonmembers']} non-members resolve no false-positive rate of 10% or below")
        within = (f" — within what {ceiling['claim']} permits (AUC up to {ceiling['auc']:.3f})"
                  if ceiling is not None else "")
        return {"answer": "leaks", "attack": name, "text": f"membership leaks: {strongest}{tpr}{within}"}
    if below:
        return {"answer": "below chance", "attack": below[0], "text": (
            f"no evidence of leakage, and {', '.join(below)} scored members significantly *lower* than non-members "
            "(AUC interval below 0.5): that is a distribution shift between the sets or a flipped score, not "
            f"membership leakage; {strongest}")}
    blind_text = f"; the blind baseline reached AUC {blind:.3f}" if blind is not None and blind == blind else ""
    return {"answer": "no evidence", "attack": name, "text": (
        f"no attack told members from non-members better than chance: {strongest}, which contains 0.5{blind_text}")}


def _level(cfg: MiaConfig, records: list[Record]) -> str:
    has_ids = all(r.meta.get("patient_id") not in (None, "") for r in records)
    if cfg.level == "auto":
        return "patient" if has_ids else "image"
    if cfg.level == "patient" and not has_ids:
        raise AuditError("--level patient needs a patient_id for every audited record; use --level image")
    if cfg.level not in ("patient", "image"):
        raise AuditError(f"unknown level {cfg.level!r}; use patient, image or auto")
    return cfg.level


def _write(target: Path, checkpoint: dict, provenance: dict, cfg: MiaConfig, out: Path, audited: list[Record],
           member: np.ndarray, scores: dict[str, np.ndarray], signal: str, references: dict, manifest: dict,
           confound: dict, warnings: list[str], roots: tuple, n_population: int) -> dict[str, Any]:
    level = _level(cfg, audited)
    patients = [normalise_patient_id(r.meta.get("patient_id")) for r in audited]
    hospitals = [str(r.meta.get("hospital", "")) for r in audited]
    results: dict[str, Any] = {}
    rows = StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["record", "patient_id", "hospital", "member", "attack", "score"])
    family = len(scores)  # the verdict takes the strongest attack: every interval is simultaneous over them
    groups = patients if level == "patient" else None  # images of a patient score alike: resample patients
    for name, score in scores.items():
        entry: dict[str, Any] = {"image": metrics.summarise(member, score, n_boot=cfg.n_boot, seed=cfg.seed,
                                                              confidence=cfg.confidence, groups=groups,
                                                              family=family)}
        entry["image"]["roc"] = metrics.roc(member, score)
        if level == "patient":
            ids, pscore = attacks.patient_scores(score, patients)
            pmember = np.array([int(any(m for m, p in zip(member, patients, strict=True) if p == i)) for i in ids])
            entry["patient"] = metrics.summarise(pmember, pscore, n_boot=cfg.n_boot, seed=cfg.seed,
                                                 confidence=cfg.confidence, family=family)
            entry["patient"]["roc"] = metrics.roc(pmember, pscore)
            for i, s, m in zip(ids, pscore, pmember, strict=True):
                writer.writerow(["", i, "", int(m), f"{name}:patient", f"{s:.6g}"])
        per_hospital = {}
        for h in sorted(set(hospitals)):
            idx = np.array([i for i, x in enumerate(hospitals) if x == h])
            if 0 < member[idx].sum() < len(idx):
                per_hospital[h] = metrics.summarise(
                    member[idx], score[idx], n_boot=cfg.n_boot, seed=cfg.seed, confidence=cfg.confidence,
                    groups=None if groups is None else [groups[i] for i in idx], family=family) | {"n": len(idx)}
        entry["per_hospital"] = per_hospital
        results[name] = entry
        for r, m, s in zip(audited, member, score, strict=True):
            writer.writerow([r.filepath, r.meta.get("patient_id", ""), r.meta.get("hospital", ""), int(m), name,
                             f"{s:.6g}"])
    doc = {
        "kind": "mia", "fedclip_version": __version__, "level": level,
        "target": {"checkpoint": str(target), "model": checkpoint.get("model"),
                   "weights_sha256": checkpoint.get("weights_sha256"), "stage": provenance.get("stage", "unknown"),
                   "ledger_epsilon": provenance.get(EPSILON_PER_NODE),
                   **TargetPrivacy.from_provenance(provenance).to_json()},
        "data": {"members": str(roots[0]), "nonmembers": str(roots[1]),
                 "population": str(roots[2]) if roots[2] else None, "n_members": int(member.sum()),
                 "n_nonmembers": int((1 - member).sum()), "n_population": n_population,
                 "n_patients": len(set(patients)) if level == "patient" else None},
        "signal": signal, "references": references, "seed": cfg.seed, "config": asdict(cfg),
        "manifest": manifest, "confound": confound, "warnings": warnings, "attacks": results,
    }
    doc["verdict"] = verdict(doc)
    io.write_text(out / SCORES_FILE, rows.getvalue())
    return write_results(out, doc, {
        "target": {"path": str(target.resolve()), "weights_sha256": checkpoint.get("weights_sha256")},
        "members": data_fingerprint(roots[0], [r for r, m in zip(audited, member, strict=True) if m]),
        "nonmembers": data_fingerprint(roots[1], [r for r, m in zip(audited, member, strict=True) if not m])})
