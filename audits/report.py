"""Audit reports a privacy officer can sign: report.html (self-contained), report.pdf (real text and
tables, via fpdf2), report.json — one or several audits (a comparison of models side by side).

The report leads with a plain-language summary (what was tested, on whom, the answer, how sure),
then the figures (ROC curves on log-log axes, score histograms, epsilon lower bounds against the
ledger's epsilon), the tables (attacks with confidence intervals, per hospital, the confound check)
and, unless redacted, thumbnails of the most exposed records. With `redact=True` no patient image,
patient id, file name or path appears anywhere in the HTML, PDF or JSON.
"""

from __future__ import annotations

import base64
import html
import io as stdio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fedclip import __version__, io  # noqa: E402
from fedclip.audits.results import SCORES_FILE, AuditError, load_results  # noqa: E402

REDACTED = "[redacted]"
FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # caption, header, rows
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # caption, PNG


def figure_png(fig: Any) -> bytes:
    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _ci(entry: dict[str, Any], key: str) -> str:
    lo, hi = entry["ci"][key]
    return f"{entry[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def strongest_attack(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    level = doc["level"]
    return max(((a, e[level]) for a, e in doc["attacks"].items()), key=lambda x: x[1]["auc"])


def _label(doc: dict[str, Any], redact: bool) -> str:
    if doc.get("report_label"):
        return doc["report_label"]
    if doc["kind"] in ("mia", "exposure", "dejavu"):
        name = Path(doc["target"]["checkpoint"])
        return (f"target {doc['target']['weights_sha256'][:8]}" if redact
                else f"{name.parent.parent.name}/{name.name}")
    if doc["kind"] == "copying":
        return "synthetic set" if redact else Path(doc["data"]["synthetic"]).name
    if doc["kind"] == "generator":
        name = Path(doc["target"]["checkpoint"])
        return (f"generator {doc['target']['weights_sha256'][:8]}" if redact
                else f"generator {name.parent.parent.name}/{name.name}")
    return f"{doc['threat']} {doc['method']} ε audit"


def _verdict(doc: dict[str, Any]) -> str:
    attack, e = strongest_attack(doc)
    lo, hi = e["ci"]["auc"]
    how = f"{int(doc['config']['confidence'] * 100)}% confidence interval"
    if lo <= 0.5 <= hi:
        answer = (f"no attack told members from non-members better than chance: the strongest ({attack}) reached "
                  f"AUC {e['auc']:.3f} ({how} {lo:.3f}–{hi:.3f}, which contains 0.5)")
    else:
        answer = (f"membership leaks: the strongest attack ({attack}) reached AUC {e['auc']:.3f} ({how} "
                  f"{lo:.3f}–{hi:.3f}) and identified {e['tpr@0.01']:.1%} of members at a 1% false-positive rate")
    return answer


def mia_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    level, data, target = doc["level"], doc["data"], doc["target"]
    s = Section(f"Membership inference — {_label(doc, redact)}")
    dp = (f"fine-tuned with {target.get('unit') or 'image'}-level DP ({target.get('neighbouring') or 'add/remove-one'}"
          f", ε ≤ {target.get('epsilon_budget')} per node over its lifetime, δ = {target.get('delta')}, accounted by "
          f"each node's {target.get('accountant') or 'rdp'} accountant)" if target.get("dp")
          else ("fine-tuned without DP" if target.get("dp") is False else "pretrained (no DP)"))
    who = (f"{data['n_members']} member and {data['n_nonmembers']} non-member images"
           + (f" of {data['n_patients']} patients" if data.get("n_patients") else ""))
    unit = ("a patient counts as a member if any of their images trained the model" if level == "patient"
            else "each image on its own")
    ledger = (f", ledger epsilon per node {_eps_text(target.get('ledger_epsilon'))}" if target.get("ledger_epsilon")
              else "")
    s.paragraphs.append(
        f"What was tested: whether the model ({target['model']}, {target['stage']}, {dp}{ledger}) reveals which "
        f"records trained it. On whom: {who}, scored at the {level} level ({unit}). "
        f"The answer: {_verdict(doc)}. Signal: {doc['signal']}.")
    for w in doc.get("warnings", []):
        s.paragraphs.append(f"Caution: {w}.")
    header = ["attack", "AUC [CI]", "TPR@1% FPR [CI]", "TPR@0.1% FPR [CI]", "members", "non-members"]
    for lvl in ("patient", "image"):
        rows = [[a, _ci(e[lvl], "auc"), _ci(e[lvl], "tpr@0.01"), _ci(e[lvl], "tpr@0.001"),
                 str(e[lvl]["n_members"]), str(e[lvl]["n_nonmembers"])] for a, e in doc["attacks"].items() if lvl in e]
        if rows:
            s.tables.append((f"{lvl}-level results ({int(doc['config']['confidence'] * 100)}% bootstrap CIs)",
                             header, rows))
    hosp = [[a, h, f"{m['auc']:.3f}", f"{m['tpr@0.01']:.3f}", str(m["n"])]
            for a, e in doc["attacks"].items() for h, m in e.get("per_hospital", {}).items()]
    if hosp:
        s.tables.append(("per hospital (image level)", ["attack", "hospital", "AUC", "TPR@1% FPR", "images"], hosp))
    c = doc["confound"]
    s.tables.append(("confound check: can members be told apart by metadata and image statistics alone?",
                     ["classifier", "AUC", "threshold", "confounded"],
                     [[c.get("classifier", "-"), f"{c['auc']:.3f}", str(c.get("threshold", "-")),
                       "yes" if c.get("confounded") else "no"]]))
    if doc.get("references"):
        r = doc["references"]
        s.paragraphs.append(f"Reference models: {r['count']}, {r['how']}; {r['variance']} variance for LiRA.")
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for a, e in doc["attacks"].items():
        fpr, tpr = np.array(e[level]["roc"][0]), np.array(e[level]["roc"][1])
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=f"{a} (AUC {e[level]['auc']:.2f})")
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false-positive rate",
           ylabel="true-positive rate", title=f"ROC, {level} level (log-log)")
    ax.legend(fontsize=7)
    s.figures.append((f"ROC curves at the {level} level; the dotted line is guessing.", figure_png(fig)))
    scores = _read_scores(audit_dir)
    attack, _ = strongest_attack(doc)
    rows = [r for r in scores if r["attack"] == attack]
    if rows:
        fig, ax = plt.subplots(figsize=(4.6, 3.0))
        for m, lab in ((1, "members"), (0, "non-members")):
            ax.hist([float(r["score"]) for r in rows if int(r["member"]) == m], bins=30, alpha=0.6, label=lab)
        ax.set(xlabel=f"{attack} score", ylabel="images", title="score distributions")
        ax.legend(fontsize=7)
        s.figures.append((f"Scores of the strongest attack ({attack}), image level.", figure_png(fig)))
        if not redact:
            top = sorted((r for r in rows if int(r["member"]) == 1), key=lambda r: -float(r["score"]))[:6]
            s.tables.append(("the most exposed members (highest scores)", ["record", "patient", "hospital", "score"],
                             [[Path(r["record"]).name, r["patient_id"], r["hospital"], f"{float(r['score']):.3f}"]
                              for r in top]))
            thumbs = _thumbnails(doc, top)
            if thumbs:
                s.figures.append(("The most exposed members (highest scores), with their file names.", thumbs))
    return s


def _eps_text(eps: Any) -> str:
    if isinstance(eps, dict):
        vals = [v for v in eps.values() if isinstance(v, int | float)]
        return f"up to {max(vals):.2f}" if vals else "unknown"
    return f"{eps:.2f}" if isinstance(eps, int | float) else "unknown"


def _read_scores(audit_dir: Path) -> list[dict[str, str]]:
    import csv

    path = audit_dir / SCORES_FILE
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["record"]]


def _thumbnails(doc: dict[str, Any], top: list[dict[str, str]]) -> bytes | None:
    """The images of the most exposed members (their scores.csv rows), where they can still be found."""
    root = Path(doc["data"]["members"])
    paths = []
    for r in top:
        p = Path(r["record"])
        p = p if p.is_absolute() else root / p
        if p.exists():
            paths.append((p, r))
    if not paths:
        return None
    fig, axes = plt.subplots(1, len(paths), figsize=(1.6 * len(paths), 2.0))
    for ax, (p, r) in zip(np.atleast_1d(axes), paths, strict=True):
        with Image.open(p) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{Path(r['record']).name}\n{float(r['score']):.2f}", fontsize=6)
        ax.axis("off")
    return figure_png(fig)


def epsilon_section(doc: dict[str, Any], redact: bool) -> Section:
    th, b = doc["theoretical"], doc["bound"]
    s = Section(f"Empirical epsilon — {_label(doc, redact)}")
    ok = doc["epsilon_lb"] <= th["epsilon"] * (1 + 1e-9)
    how = ("gradient canaries scored from the update the server receives" if doc["threat"] == "white-box"
           else "crafted input canaries scored by the released model")
    s.paragraphs.append(
        f"What was tested: whether DP fine-tuning with the federation's settings leaks more than its accountant "
        f"says, by a {doc['threat']} audit ({how}), "
        f"{doc['method']} method. The answer: the data rule out epsilon below {doc['epsilon_lb']:.3f} at "
        f"{int(b['confidence'] * 100)}% confidence, against a theoretical epsilon of {th['epsilon']:.3f} "
        f"(delta {th['delta']:g}, {th['accountant']}, per {th['unit']}, {th['neighbouring']}). "
        + ("This is consistent with the guarantee (a lower bound below the claim)." if ok else
           "THE LOWER BOUND EXCEEDS THE CLAIMED EPSILON: the mechanism does not deliver the privacy its ledger "
           "states (or, with probability at most 1 - confidence, this is a statistical fluke)."))
    if doc.get("noise") != "as configured":
        s.paragraphs.append(f"Note: noise {doc['noise']}.")
    rows = [["epsilon lower bound", f"{doc['epsilon_lb']:.3f}"], ["theoretical epsilon", f"{th['epsilon']:.3f}"],
            ["tightness (lower bound / epsilon)", f"{doc['tightness']:.3f}" if doc.get("tightness") is not None
             else "-"], ["ledger epsilon", f"{doc['ledger_epsilon']:.3f}" if doc.get("ledger_epsilon") else "-"],
            ["noise multiplier, sample rate, steps", f"{th['noise_multiplier']:.3f}, {th['sample_rate']:.3f}, "
             f"{th['steps']}"]]
    rows += [[k, str(v)] for k, v in b.items() if k not in ("epsilon_lb",)]
    s.tables.append(("bound and the training it audits", ["quantity", "value"], rows))
    return s


def copying_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    data, share, ct, flags = doc["data"], doc["dcr"]["share_closer_to_train"], doc["three_sample_test"], doc["flags"]
    s = Section(f"Data copying — {_label(doc, redact)}")
    answer = ("the synthetic set copies training records: " + "; ".join(doc["verdict"]["reasons"])
              if doc["verdict"]["copies"] else "no evidence that the synthetic set copies its training patients")
    s.paragraphs.append(
        f"What was tested: whether {data['n_synthetic']} synthetic images reproduce any of the {data['n_train']} "
        f"images their generator was fitted on, against {data['n_holdout']} images of patients it never saw, "
        f"in {doc['embedding']}. The answer: {answer}.")
    if doc["verdict"].get("caution"):
        s.paragraphs.append(f"Caution: {doc['verdict']['caution']}.")
    c_t = f"{ct['c_t']:.2f}" if ct["c_t"] is not None else "n/a (no cell had enough synthetic images)"
    rows = [["share of synthetic images closer to train than to holdout (1/2 if no copying)",
             f"{share['share']:.3f} [{share['ci'][0]:.3f}, 1], p = {share['p_value']:.2g}"],
            ["C_T, Meehan et al. 2020 (<< 0 copying, ~0 fine, >> 0 underfitting)",
             f"{c_t} over {ct['cells_used']} of {ct['k']} cells"],
            ["near-copies flagged", f"{flags['flagged']} of {data['n_synthetic']} ({flags['rate']:.2%})"],
            ["flag rule", flags["rule"]],
            ["median distance: synthetic to train / to holdout / holdout to train",
             f"{doc['dcr']['synthetic_to_train']['median']:.3f} / {doc['dcr']['synthetic_to_holdout']['median']:.3f}"
             f" / {doc['dcr']['holdout_to_train']['median']:.3f}"]]
    s.tables.append(("copying figures", ["quantity", "value"], rows))
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    hist = doc["histogram"]
    bins = np.histogram_bin_edges(hist["synthetic_to_train"] + hist["holdout_to_train"], 40)
    ax.hist(hist["holdout_to_train"], bins=bins, alpha=0.6, density=True, label="holdout (fresh patients)")
    ax.hist(hist["synthetic_to_train"], bins=bins, alpha=0.6, density=True, label="synthetic")
    ax.axvline(flags["threshold"], color="k", ls=":", lw=0.8, label="flag threshold")
    ax.set(xlabel="distance to the nearest training image", ylabel="density", title="distance to closest record")
    ax.legend(fontsize=7)
    s.figures.append(("Distance to the closest training image: a copying generator puts synthetic images left of "
                      "the fresh patients.", figure_png(fig)))
    pairs = _copy_pairs(doc, audit_dir) if not redact else None
    if pairs:
        s.figures.append(("The closest synthetic-training pairs (synthetic left, training image right), most "
                          "suspicious first.", pairs))
    return s


def generator_section(doc: dict[str, Any], redact: bool) -> Section:
    """A learned generator: its privacy as trained, membership leakage of its patients, copies, fidelity."""
    s = Section(f"Learned generator — {_label(doc, redact)}")
    privacy, data = doc["target"].get("privacy") or {}, doc["data"]
    trained = (f"trained with patient-level DP ({privacy['neighbouring']}, lifetime ε = {privacy['epsilon']:.2f} at "
               f"δ = {privacy['delta']:g}, {privacy['accountant']} accountant, noise from the OS CSPRNG)"
               if privacy.get("dp") else "trained without DP: it carries no privacy guarantee")
    verdict = doc["verdict"]
    answer = ("the generator reproduces its patients: " + "; ".join(verdict["reasons"]) if verdict["copies"]
              else "no evidence that the generator reproduces its patients")
    s.paragraphs.append(
        f"What was tested: whether a generator ({doc['target']['model']}, {doc['target']['steps']} steps, {trained}) "
        f"reproduces the {data['n_member_patients']} patients it was trained on, against {data['n_holdout_patients']} "
        f"fresh patients of the same population, from {data['n_samples']} generated images. The answer: {answer}.")
    if verdict.get("caution"):
        s.paragraphs.append(f"Caution: {verdict['caution']}.")
    rows = []
    for name, e in doc["attacks"].items():
        p = e["patient"]
        rows.append([name, _ci(p, "auc"), str(p["n_members"]), str(p["n_nonmembers"]), doc["signal"][name]])
    s.tables.append(("patient-level membership inference (bootstrap CIs over patients)",
                     ["attack", "AUC [CI]", "trained", "fresh", "signal"], rows))
    flags, cp, fid = doc["copying"]["flags"], doc["copies_per_patient"], doc["fidelity"]
    s.tables.append(("copies and fidelity", ["quantity", "value"], [
        ["near-copies among the samples", f"{flags['flagged']} of {data['n_samples']} ({flags['rate']:.1%}); "
                                         f"fresh patients: at most {flags['alpha']:.1%}"],
        ["training patients with a near-copy", f"{cp['patients_with_copies']} of {cp['of_patients']}"],
        ["Fréchet distance: samples vs fresh / training vs fresh patients",
         f"{fid['frechet_samples_to_holdout']:.3f} / {fid['frechet_members_to_holdout']:.3f} "
         f"({fid['dimensions']} principal axes)"],
        ["embedding", doc["copying"]["embedding"]]]))
    return s


def exposure_section(doc: dict[str, Any], redact: bool) -> Section:
    s = Section(f"Canary exposure — {_label(doc, redact)}")
    mem = doc["memorised_at_repeats"]
    answer = (f"the model memorised the secrets of canaries repeated {', '.join(mem)} times: it ranks them above "
              "what it gives never-trained controls" if mem else
              "no planted canary's secret is exposed beyond the never-trained controls")
    s.paragraphs.append(
        f"What was tested: whether the model memorised rare training records. {doc['n_planted']} canaries (unique "
        f"synthetic patients whose caption carries a random secret) were planted in pretraining, repeated a "
        f"varying number of times; {doc['n_controls']} controls were drawn the same way but never trained on. "
        f"Exposure is log2 of the secret space ({doc['space']:,}) minus log2 of the secret's rank: "
        f"{doc['max_exposure']:.1f} bits means ranked first, about 1.4 bits means chance. The answer: {answer}. "
        f"Method: {doc['method']}.")
    for w in doc.get("warnings", []):
        s.paragraphs.append(f"Caution: {w}.")
    names = ["target"] + (["reference"] if doc.get("reference") else [])
    rows = []
    for r, g in doc["by_repeats"].items():
        gap = g.get("gap_to_controls")
        rows.append(["controls" if r == "0" else r, str(g["target"]["n"]),
                     *[f"{g[n]['mean']:.2f} [{g[n]['ci'][0]:.2f}, {g[n]['ci'][1]:.2f}]" for n in names],
                     f"{gap['gap']:.2f} [{gap['ci'][0]:.2f}, {gap['ci'][1]:.2f}]" if gap else "-"])
    ci = int(doc["config"]["confidence"] * 100)
    s.tables.append((f"mean exposure in bits by repeat count ({ci}% bootstrap CIs)",
                     ["repeats", "canaries", *names, "target - controls"], rows))
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    reps = [r for r in doc["by_repeats"] if r != "0"]
    x = np.arange(len(reps))
    for k, n in enumerate(names):
        ax.bar(x + (k - 0.5 * (len(names) - 1)) * 0.35, [doc["by_repeats"][r][n]["mean"] for r in reps], 0.35,
               label=n)
    ax.axhline(doc["by_repeats"]["0"]["target"]["mean"], color="k", ls=":", lw=0.8, label="controls (target)")
    ax.set_xticks(x, reps)
    ax.set(xlabel="times each canary was repeated", ylabel="exposure (bits)", title="canary exposure")
    ax.legend(fontsize=7)
    s.figures.append(("Exposure of planted canaries by repeat count; the dotted line is never-trained controls.",
                      figure_png(fig)))
    return s


def dejavu_section(doc: dict[str, Any], redact: bool) -> Section:
    s = Section(f"Déjà-vu memorization — {_label(doc, redact)}")
    g, ba, data = doc["gap"], doc["balanced_accuracy"], doc["data"]
    answer = (f"the target recalls what its training captions no longer say: balanced accuracy {ba['target']:.3f} "
              f"against {ba['reference']:.3f} for a model that never saw these records" if doc["memorised"] else
              f"no memorization beyond the reference (gap {g['gap']:+.3f}, CI {g['ci'][0]:+.3f} to {g['ci'][1]:+.3f})")
    s.paragraphs.append(
        f"What was tested: whether the model remembers its training pairs beyond what it learnt about fundus "
        f"images in general. Each of {data['n_members']} training captions was stripped of what it says about "
        f"{doc['attribute']}; the model retrieved public images with the stripped caption ({data['n_public']} "
        f"public images) and the hidden {doc['label']} label was predicted from them. The answer: {answer}. "
        f"Method: {doc['method']}.")
    ci = int(doc["config"]["confidence"] * 100)
    s.tables.append((f"{doc['label']} predicted from the stripped caption ({ci}% paired bootstrap CI)",
                     ["model", "balanced accuracy", "gap (target - reference)", "confidently right only on target"],
                     [["target", f"{ba['target']:.3f}", f"{g['gap']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]",
                       str(doc["confident_and_right_only_on_target"])],
                      ["reference", f"{ba['reference']:.3f}", "-", "-"]]))
    return s


def _copy_pairs(doc: dict[str, Any], audit_dir: Path, n: int = 4) -> bytes | None:
    import csv

    from fedclip.audits.copying import COPIES_FILE

    path = audit_dir / COPIES_FILE
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    found = []
    for r in rows:
        a, b = Path(r["synthetic"]), Path(r["nearest_train"])
        a = a if a.is_absolute() else Path(doc["data"]["synthetic"]) / a
        b = b if b.is_absolute() else Path(doc["data"]["train"]) / b
        if a.exists() and b.exists():
            found.append((a, b, r))
    if not found:
        return None
    fig, axes = plt.subplots(len(found), 2, figsize=(3.2, 1.7 * len(found)), squeeze=False)
    for (a, b, r), (left, right) in zip(found, axes, strict=True):
        for ax, p in ((left, a), (right, b)):
            with Image.open(p) as im:
                ax.imshow(im.convert("RGB"))
            ax.axis("off")
        flag = " flagged" if r["flagged"] == "1" else ""
        left.set_title(f"{a.name}{flag}", fontsize=6)
        right.set_title(f"{b.name}, d = {float(r['distance']):.3f}", fontsize=6)
    return figure_png(fig)


def _comparison(docs: list[dict[str, Any]], redact: bool) -> Section:
    s = Section("Models side by side")
    rows = []
    for d in docs:
        if d["kind"] == "mia":
            attack, e = strongest_attack(d)
            rows.append([_label(d, redact), d["target"]["stage"], "yes" if d["target"].get("dp") else "no",
                         _eps_text(d["target"].get("ledger_epsilon")), attack, _ci(e, "auc"), _ci(e, "tpr@0.01")])
        elif d["kind"] == "epsilon":
            rows.append([_label(d, redact), "DP fine-tuning", "yes", f"{d['theoretical']['epsilon']:.2f}",
                         f"ε_lb {d['epsilon_lb']:.2f}", "-", "-"])
        elif d["kind"] == "exposure":
            top = max((r for r in d["by_repeats"] if r != "0"), key=int, default="0")
            g = d["by_repeats"][top]
            gap = g.get("gap_to_controls", {"gap": 0.0, "ci": [0.0, 0.0]})
            rows.append([_label(d, redact), d["target"]["stage"], "-", "-", f"exposure ×{top}",
                         f"{g['target']['mean']:.2f} bits", f"vs controls {gap['gap']:+.2f} [{gap['ci'][0]:.2f}, "
                         f"{gap['ci'][1]:.2f}]"])
        elif d["kind"] == "dejavu":
            g = d["gap"]
            rows.append([_label(d, redact), d["target"]["stage"], "-", "-", f"déjà-vu ({d['attribute']})",
                         f"gap {g['gap']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]", "-"])
        elif d["kind"] == "generator":
            privacy = d["target"].get("privacy") or {}
            _, e = max(((a, x["patient"]) for a, x in d["attacks"].items()), key=lambda t: t[1]["auc"])
            rows.append([_label(d, redact), "generator", "yes" if privacy.get("dp") else "no",
                         f"{privacy['epsilon']:.2f}" if privacy.get("dp") else "∞", "generator MIA (patient)",
                         _ci(e, "auc"), f"copies {d['copying']['flags']['rate']:.1%}"])
        elif d["kind"] == "copying":
            ct = d["three_sample_test"]["c_t"]
            rows.append([_label(d, redact), "synthetic data", "-", "-", "copying",
                         f"C_T {ct:.2f}" if ct is not None else "C_T n/a", f"flagged {d['flags']['rate']:.1%}"])
    s.tables.append(("one row per audit; strongest attack per model", ["model", "stage", "DP", "ledger ε",
                                                                      "attack", "AUC [CI]", "TPR@1% [CI]"], rows))
    mias = [d for d in docs if d["kind"] == "mia"]
    if mias:
        fig, ax = plt.subplots(figsize=(4.6, 4.0))
        for d in mias:
            attack, e = strongest_attack(d)
            ax.plot(np.maximum(e["roc"][0], 1e-4), np.maximum(e["roc"][1], 1e-4),
                    label=f"{_label(d, redact)} ({attack}, AUC {e['auc']:.2f})")
        ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false-positive rate",
               ylabel="true-positive rate", title="strongest attack per model")
        ax.legend(fontsize=6)
        s.figures.append(("ROC of the strongest attack on each model (log-log).", figure_png(fig)))
    eps = [d for d in docs if d["kind"] == "epsilon"]
    if eps:
        fig, ax = plt.subplots(figsize=(4.6, 3.0))
        x = np.arange(len(eps))
        ax.bar(x - 0.2, [d["theoretical"]["epsilon"] for d in eps], 0.4, label="theoretical ε")
        ax.bar(x + 0.2, [d["epsilon_lb"] for d in eps], 0.4, label="ε lower bound")
        ax.set_xticks(x, [_label(d, redact) for d in eps], fontsize=6, rotation=15)
        ax.legend(fontsize=7)
        s.figures.append(("Empirical lower bounds against the accountant's epsilon.", figure_png(fig)))
    return s


def _redact(doc: Any) -> Any:
    """Drop every path, file name and patient id from a results document."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k in ("checkpoint", "members", "nonmembers", "population", "manifest", "base", "source", "synthetic",
                     "train", "holdout", "public", "reference", "run", "embedding") \
                    and isinstance(v, str | dict):
                out[k] = REDACTED
            elif k in ("roc", "histogram"):
                out[k] = v
            else:
                out[k] = _redact(v)
        return out
    if isinstance(doc, list):
        return [_redact(v) for v in doc]
    return doc


def _html(title: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "td,th{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left}"
             "th{background:#eee}figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        for caption, header, rows in s.tables:
            parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>"
                         + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        for caption, png in s.figures:
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _pdf(title: str, sections: list[Section]) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    pdf = FPDF(format="A4")
    pdf.set_creation_date(datetime(2000, 1, 1, tzinfo=UTC))  # the bytes depend on the content only
    pdf.add_font("DejaVu", "", str(FONT / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONT / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(True, 15)
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.multi_cell(0, 9, title, new_x="LMARGIN", new_y="NEXT")
    for s in sections:
        pdf.set_font("DejaVu", "B", 12)
        pdf.ln(2)
        pdf.multi_cell(0, 7, s.title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 9)
        for p in s.paragraphs:
            pdf.multi_cell(0, 4.6, p, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        for caption, header, rows in s.tables:
            pdf.set_font("DejaVu", "B", 8)
            pdf.multi_cell(0, 4.5, caption, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("DejaVu", "", 7)
            with pdf.table(headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
                           line_height=4, text_align="LEFT") as table:
                table.row(header)
                for r in rows:
                    table.row([str(c) for c in r])
            pdf.ln(2)
        for caption, png in s.figures:
            with Image.open(stdio.BytesIO(png)) as im:
                w, h = im.size
            width = min(120.0, 180.0 * w / max(w, 1) if w < 900 else 180.0)
            if pdf.get_y() + width * h / w > pdf.h - 20:
                pdf.add_page()
            pdf.image(stdio.BytesIO(png), w=width)
            pdf.set_font("DejaVu", "", 7)
            pdf.multi_cell(0, 4, caption, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    return bytes(pdf.output())


def section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    """The report section of one audit, by its kind."""
    kind = doc["kind"]
    if kind == "mia":
        return mia_section(doc, audit_dir, redact)
    if kind == "epsilon":
        return epsilon_section(doc, redact)
    if kind == "copying":
        return copying_section(doc, audit_dir, redact)
    if kind == "exposure":
        return exposure_section(doc, redact)
    if kind == "dejavu":
        return dejavu_section(doc, redact)
    if kind == "generator":
        return generator_section(doc, redact)
    raise AuditError(f"{audit_dir}: unknown audit kind {kind!r}; was it written by a newer fedclip?")


def render(audit_dirs: list[str | Path], out: str | Path, *, redact: bool = False, title: str | None = None,
           lead: list[Section] | None = None, labels: list[str] | None = None,
           extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """report.html, report.pdf and report.json for one audit, or a comparison of several.

    `lead` sections come first (a study's headline), `labels` name the audits (else the checkpoint's run
    and tag), `extra` goes into report.json beside the audits.
    """
    dirs = [Path(d) for d in audit_dirs]
    docs = [load_results(d) for d in dirs]
    if labels is not None:
        docs = [{**d, "report_label": label} for d, label in zip(docs, labels, strict=True)]
    sections = list(lead or []) + ([_comparison(docs, redact)] if len(docs) > 1 else [])
    for d, doc in zip(dirs, docs, strict=True):
        sections.append(section(doc, d, redact))
    title = title or ("fedclip privacy audit" if len(docs) == 1 else "fedclip privacy audit: models compared")
    title += f" — {datetime.now(UTC):%Y-%m-%d}"
    out = Path(out)
    summary = {"title": title, "fedclip_version": __version__, "redacted": redact, **(extra or {}),
               "audits": [_redact(d) if redact else d for d in docs]}
    return {"html": io.write_text(out / "report.html", _html(title, sections)),
            "pdf": io.write_bytes(out / "report.pdf", _pdf(title, sections)),
            "json": io.write_text(out / "report.json", json.dumps(summary, indent=2, default=str))}
