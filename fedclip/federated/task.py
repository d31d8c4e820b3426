"""The ML of a federated round as plain functions (Flower-free, so they are testable on their own).

Client side: load this hospital's partition, apply the global weights, check the privacy budget,
fine-tune with DP-SGD, record the spend durably, return the update. Server side: merge weights into
the global model, evaluate it, checkpoint it. `client_app.py` / `server_app.py` only move messages.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedclip import evaluate, models, tasks
from fedclip.data import partition as partitioning
from fedclip.data.records import Record, fingerprint, normalise_patient_id, read_metadata
from fedclip.errors import FedclipError
from fedclip.federated import keys
from fedclip.federated.config import FederateConfig
from fedclip.federated.ledger import BudgetExhausted, PrivacyLedger, plan_noise
from fedclip.federated.node import Node
from fedclip.federated.policy import NEIGHBOURING, Grant, Refusal, check_request, negotiate
from fedclip.federated.tokens import NODE_TOKENS
from fedclip.finetune import finetune, steps_per_round
from fedclip.head import trained_keys
from fedclip.noise import gaussian_noise


def client_records(cfg: FederateConfig, node: Node, node_config: dict[str, Any]) -> tuple[list[Record], Path]:
    """This node's hospital: its own dataset dir (deployment) or a partition of the shared one (simulation).

    A deployed node serves only the data its own `--node-config data-dir=...` names: the run config's
    `data`, `partitioning`, `seed`, `alpha` and `clients` are the server's, and letting them pick the
    node's records would let a server draw overlapping subsets of the same patients at will.
    """
    pid = int(node_config.get("partition-id", 0))
    if "data-dir" in node_config:  # a real hospital serves its own data
        root = Path(str(node_config["data-dir"]))
        return read_metadata(root), root
    if node.deployed:
        raise Refusal("refused: this SuperNode's --node-config names no data-dir; a deployed node trains only on "
                      "the dataset its own configuration names, never on one the run config chooses")
    if cfg.data is None:
        raise FedclipError("no client data: pass --data (simulation) or node-config data-dir=... (deployment)")
    records = read_metadata(cfg.data)
    parts = simulated_partitions(cfg, records, int(node_config.get("num-partitions", cfg.clients)))
    return [records[i] for i in parts[pid]], cfg.data


def simulated_partitions(cfg: FederateConfig, records: list[Record], num: int) -> list[list[int]]:
    """The simulated hospitals' record indices: what client `partition-id` K trains on is `[K]`."""
    return partitioning.split(records, cfg.partitioning, num, seed=cfg.seed, alpha=cfg.alpha,
                              label=tasks.task(cfg.finetune.task).target)


def load_global(cfg: FederateConfig, arrays: dict[str, torch.Tensor] | None) -> models.VisionClip:
    if cfg.checkpoint is None:
        raise FedclipError("no --checkpoint: federated fine-tuning starts from a pretrained checkpoint")
    vc = models.load_checkpoint(cfg.checkpoint)
    if arrays:
        expected = set(trained_keys(vc, cfg.finetune.train_blocks))
        if set(arrays) != expected:
            raise FedclipError(f"global weights carry keys {sorted(set(arrays) ^ expected)[:4]} that do not match "
                               f"train_blocks={cfg.finetune.train_blocks}; client and server configs differ")
        vc.model.load_state_dict(arrays, strict=False)
    return vc


@dataclass
class ClientRound:
    update: dict[str, torch.Tensor] | None  # None: the client refused to train
    metrics: dict[str, float]
    strings: dict[str, str]


def _public_size(node: Node, ledger: PrivacyLedger, n: int, round_: int, dataset: str) -> int:
    """The dataset size this node may release: declared in its policy, or released once with noise.

    q, steps and the aggregation weight derive from it, so the real size never shapes what leaves.
    """
    if node.policy.dataset_size is not None:
        return node.policy.dataset_size
    released = ledger.public_size()
    if released is not None:
        return released
    sigma = node.policy.size_noise  # a count: sensitivity 1 under add/remove-one
    ledger.check(noise_multiplier=sigma, sample_rate=1.0, steps=1)
    size = max(1, round(n + gaussian_noise(sigma, seed=node.noise_seed(round_, 1))))
    ledger.record(kind="dataset-size", round_=round_, noise_multiplier=sigma, sample_rate=1.0, steps=1,
                  noise_source=node.noise_source, public_size=size, data_fingerprint=dataset)
    return size


def _most_images_per_patient(records: list[Record]) -> int | None:
    """The group size for image-unit group privacy; None when some image has no patient id (then nobody
    can say how many images one person has, and the ledger's grouping says the patient figure is unknown)."""
    ids = [normalise_patient_id(r.meta.get("patient_id")) for r in records]
    if not ids or not all(ids):
        return None
    return max(Counter(ids).values())


def patient_ids(node: Node, records: list[Record]) -> tuple[list[str], str]:
    """Each record's patient ("" for an image excluded from training), and how they were grouped (for the ledger).

    An image without a patient id is, by the node's policy: excluded (default: a per-record decision, so
    the DP guarantee holds for the rest), its own patient, or a reason to refuse the round — which tells
    the server one bit about the data (that some image lacks an id), so its count stays in the node's log.
    """
    ids = [normalise_patient_id(r.meta.get("patient_id")) for r in records]
    missing = sum(not i for i in ids)
    if not missing:
        return ids, "patient_id"
    node.log(images_without_patient_id=missing, policy=node.policy.images_without_patient)
    if node.policy.images_without_patient == "refuse":
        raise Refusal("refused: some images have no patient_id, so patient-level privacy cannot be guaranteed "
                      "(the node's policy says refuse; its log has the count)")
    if node.policy.images_without_patient == "own-patient":
        return [i or f"image:{r.filepath}" for i, r in zip(ids, records, strict=True)], \
            f"patient_id; {missing} image(s) without one counted as their own patient (node policy)"
    return ids, f"patient_id; {missing} image(s) without one excluded from training (node policy)"


def _early_refusal(node: Node, ledger: PrivacyLedger, grant: Grant, cfg: FederateConfig) -> None:
    """Refuse what policy and public values alone decide, before the node reads a single record: a
    spent budget or a malformed request then costs the same time with 4 images as with 40,000."""
    check_request(cfg.finetune, cfg.rounds)
    if grant.dp and ledger.spent() >= 0.99 * grant.epsilon:
        raise BudgetExhausted(f"refused: node {node.name} has spent {ledger.spent():.3f} of its lifetime "
                              f"epsilon {grant.epsilon:g} on this cohort; it is past its budget")


def client_train(cfg: FederateConfig, node: Node, node_config: dict[str, Any], arrays: dict[str, torch.Tensor],
                 round_: int, proximal_mu: float = 0.0) -> ClientRound:
    """One local round: policy, lock, budget, DP fine-tuning, durable ledger entry, then the update.

    Whether the node replies with an update depends only on its policy and public values: with no
    labelled record for the task it still runs the DP steps (noise only) and is charged as usual, so the
    server cannot learn from a refusal whether some patient has a label.
    """
    base = {keys.ROUND: float(round_), keys.PARTITION: float(node_config.get("partition-id", 0))}
    try:
        grant = negotiate(node.policy, dp=cfg.finetune.dp, epsilon=cfg.finetune.epsilon, delta=cfg.finetune.delta,
                          unit=cfg.finetune.unit)
        ledger = node.ledger(grant)
        _early_refusal(node, ledger, grant, cfg)
    except BudgetExhausted as e:
        return ClientRound(None, {**base, keys.REFUSED: 1.0, keys.EPSILON: ledger.spent(),
                                  keys.EPSILON_BUDGET: grant.epsilon}, {keys.REASON: str(e)})
    except Refusal as e:
        return ClientRound(None, {**base, keys.REFUSED: 1.0}, {keys.REASON: str(e)})
    records, root = client_records(cfg, node, node_config)
    dataset = fingerprint(records)
    vc = load_global(cfg, arrays)
    keep, tokens, targets = NODE_TOKENS.get(vc, records, root, cfg, dataset)
    ft = cfg.finetune_config(grant, proximal_mu)
    units, patients, grouping = len(records), None, "image"
    if grant.unit == "image" and _most_images_per_patient(records) is None:
        grouping = "image; patient-level figure unknown (some images have no patient_id)"
    if grant.unit == "patient":
        try:
            ids, grouping = patient_ids(node, records)
        except Refusal as e:
            return ClientRound(None, {**base, keys.REFUSED: 1.0}, {keys.REASON: str(e)})
        trained = [j for j, i in enumerate(keep) if ids[i]]  # images excluded for lack of an id drop out
        tokens, targets = tokens[trained], targets[trained]
        units, patients = len({i for i in ids if i}), [ids[keep[j]] for j in trained]
    with ledger.locked():
        strings = {keys.UNIT: grant.unit, keys.NEIGHBOURING: NEIGHBOURING, keys.ACCOUNTANT: grant.accountant,
                   keys.DATASET_ID: node.register(dataset, records)}
        if not grant.dp:  # the policy allows it; the lifetime ledger still says that this data went out raw
            entry = ledger.record(kind="no-dp", round_=round_, noise_multiplier=math.inf, sample_rate=1.0, steps=1,
                                  noise_source="none", data_fingerprint=dataset)
            result = finetune(vc, tokens, targets, ft, patients=patients)
            node.log(round=round_, dataset=dataset, train_loss=result.loss, train_accuracy=result.accuracy, dp=False)
            return ClientRound(result.state, {**base, keys.NUM_EXAMPLES: float(units),
                                              keys.UNIT_WEIGHT: 1.0, keys.EPSILON: entry.epsilon}, strings)
        try:
            size = _public_size(node, ledger, units, round_, dataset)  # images or patients, as the unit
            q = min(1.0, cfg.finetune.batch_size / size)
            steps = steps_per_round(ft, size)
            rounds_left = max(1, cfg.rounds - round_ + 1)
            sigma = plan_noise(ledger.history(), target=grant.epsilon, delta=grant.delta,
                               accountant=grant.accountant, sample_rate=q, steps=steps * rounds_left)
            if sigma is None:
                raise BudgetExhausted(f"refused: node {node.name} has spent {ledger.spent():.3f} of its lifetime "
                                      f"epsilon {grant.epsilon:g} on this cohort; it is past its budget")
            ledger.check(noise_multiplier=sigma, sample_rate=q, steps=steps)
        except BudgetExhausted as e:
            return ClientRound(None, {**base, keys.REFUSED: 1.0, keys.EPSILON: ledger.spent(),
                                      keys.EPSILON_BUDGET: grant.epsilon}, {**strings, keys.REASON: str(e)})
        result = finetune(vc, tokens, targets, ft, noise_multiplier=sigma, sample_rate=q, steps=steps,
                          public_size=size, noise_seed=node.noise_seed(round_, 2), patients=patients)
        entry = ledger.record(kind="train", round_=round_, noise_multiplier=sigma, sample_rate=q, steps=steps,
                              noise_source=node.noise_source, group_size=_most_images_per_patient(records),
                              grouping=grouping, data_fingerprint=dataset)
    # durable BEFORE the update leaves this node; loss and accuracy on private batches stay here
    node.log(round=round_, dataset=dataset, train_loss=result.loss, train_accuracy=result.accuracy,
             trained_records=len(targets), epsilon=entry.epsilon)
    return ClientRound(result.state, {
        **base, keys.NUM_EXAMPLES: float(size), keys.UNIT_WEIGHT: 1.0, keys.EPSILON: entry.epsilon,
        keys.EPSILON_ROUND: entry.epsilon_round, keys.EPSILON_BUDGET: grant.epsilon, keys.DELTA: grant.delta,
        keys.NOISE_MULTIPLIER: sigma, keys.SAMPLE_RATE: q, keys.STEPS: float(steps)}, strings)


def client_evaluate(cfg: FederateConfig, node: Node, node_config: dict[str, Any],
                    arrays: dict[str, torch.Tensor], round_: int) -> ClientRound:
    """Accuracy of the sent weights on this node's data, only if its policy answers, noised and charged.

    With the patient as unit, "correct" sums each patient's fraction of correct images and "count" counts
    patients, so one patient moves each coordinate by at most 1 too.
    The released pair (correct, count) moves by at most 1 in each coordinate when one image is added
    or removed (L2 sensitivity sqrt 2): Gaussian noise of std `evaluate_noise` on each is a Gaussian
    release with noise multiplier evaluate_noise / sqrt 2. The server may send any weights (a crafted
    "query" model); that is why answers are charged like training. With no labelled record the node
    answers (0, 0) plus the same noise: whether it answers never depends on the data.
    """
    base = {keys.ROUND: float(round_), keys.PARTITION: float(node_config.get("partition-id", 0))}
    if not node.policy.answer_evaluate:
        return ClientRound(None, {**base, keys.REFUSED: 1.0},
                           {keys.REASON: "refused: the node's policy does not answer evaluation requests"})
    try:
        grant = negotiate(node.policy, dp=True, epsilon=cfg.finetune.epsilon, delta=cfg.finetune.delta,
                          unit=cfg.finetune.unit)
        ledger = node.ledger(grant)
        _early_refusal(node, ledger, grant, cfg)
    except BudgetExhausted as e:
        return ClientRound(None, {**base, keys.REFUSED: 1.0, keys.EPSILON: ledger.spent()}, {keys.REASON: str(e)})
    except Refusal as e:
        return ClientRound(None, {**base, keys.REFUSED: 1.0}, {keys.REASON: str(e)})
    multiplier = node.policy.evaluate_noise / math.sqrt(2)
    with ledger.locked():
        try:
            ledger.check(noise_multiplier=multiplier, sample_rate=1.0, steps=1)
        except BudgetExhausted as e:
            return ClientRound(None, {**base, keys.REFUSED: 1.0, keys.EPSILON: ledger.spent()}, {keys.REASON: str(e)})
        records, root = client_records(cfg, node, node_config)
        vc = load_global(cfg, arrays)
        keep, y = tasks.labelled([r.labels for r in records], cfg.finetune.task, required=False)
        correct, count = 0.0, 0
        if len(keep):
            feats = evaluate.image_embeddings(vc, [records[i].path(root) for i in keep])
            hits = evaluate.zero_shot_scores(vc, feats, tasks.task(cfg.finetune.task)).argmax(1) == y
            if grant.unit == "patient":
                ids, _ = patient_ids(node, [records[i] for i in keep])
                by: dict[str, list[bool]] = {}
                for i, h in zip(ids, hits, strict=True):
                    if i:
                        by.setdefault(i, []).append(bool(h))
                correct, count = sum(sum(v) / len(v) for v in by.values()), len(by)
            else:
                correct, count = float(hits.sum()), len(keep)
        noisy_correct = correct + gaussian_noise(node.policy.evaluate_noise, seed=node.noise_seed(round_, 3))
        noisy_count = count + gaussian_noise(node.policy.evaluate_noise, seed=node.noise_seed(round_, 4))
        entry = ledger.record(kind="evaluate", round_=round_, noise_multiplier=multiplier, sample_rate=1.0, steps=1,
                              noise_source=node.noise_source, data_fingerprint=fingerprint(records))
    node.log(round=round_, evaluate_correct=correct, evaluate_count=count)
    return ClientRound(None, {**base, keys.NUM_EXAMPLES: float(max(1, round(noisy_count))), keys.UNIT_WEIGHT: 1.0,
                              keys.ACCURACY: min(1.0, max(0.0, noisy_correct / max(1.0, noisy_count))),
                              keys.EPSILON: entry.epsilon},
                       {keys.UNIT: grant.unit, keys.NEIGHBOURING: NEIGHBOURING, keys.ACCOUNTANT: grant.accountant})


# ------------------------------------------------------------------------------------------ server
def check_update(update: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray],
                 max_norm: float) -> str | None:
    """Why an update must be rejected (wrong keys, shape or dtype, NaN/Inf, or an L2 distance from the
    global weights above `max_norm`), or None if it is sound."""
    if set(update) != set(global_arrays):
        return f"keys differ from the global model ({sorted(set(update) ^ set(global_arrays))[:3]})"
    squared = 0.0
    for k, v in update.items():
        g = global_arrays[k]
        if tuple(v.shape) != tuple(g.shape):
            return f"{k} has shape {tuple(v.shape)}, expected {tuple(g.shape)}"
        if v.dtype != g.dtype:
            return f"{k} has dtype {v.dtype}, expected {g.dtype}"
        if not np.isfinite(v).all():
            return f"{k} contains NaN or Inf"
        squared += float(np.sum((v.astype(np.float64) - g.astype(np.float64)) ** 2))
    if not squared <= max_norm ** 2:  # also catches an overflow to inf
        return f"the update moves the weights by {squared ** 0.5:.3g} (L2), more than max_update_norm={max_norm:g}"
    return None


def server_evaluate(cfg: FederateConfig, vc: models.VisionClip, records: list[Record], root: Path) -> dict[str, float]:
    res = evaluate.zero_shot(vc, [r.path(root) for r in records], [r.labels for r in records], cfg.finetune.task,
                             n_boot=0)
    return {"balanced_accuracy": res["balanced_accuracy"], "macro_f1": res["macro_f1"],
            **({"auc": res["auc"]} if "auc" in res else {}), "n": float(res["n"])}

