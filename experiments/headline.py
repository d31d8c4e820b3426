"""A study's headline: per model, the data it saw, its DP epsilon, its quality and its leakage; and the
three ratios an ethics board asks for. Built from the stages' files, rendered as the report's first page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedclip import config as cfglib  # noqa: E402
from fedclip.audits import metrics  # noqa: E402
from fedclip.audits.mia import strongest_attack  # noqa: E402
from fedclip.audits.report import Section, figure_png  # noqa: E402
from fedclip.audits.report import render as render_audits  # noqa: E402
from fedclip.audits.results import load_results  # noqa: E402
from fedclip.experiments.outputs import (  # noqa: E402
    Cohorts,
    Federation,
    GeneratorRelease,
    ResultsFile,
    Synthesized,
)

if TYPE_CHECKING:  # the study module imports this one
    from fedclip.experiments.study import StudyConfig

FORMAT = 3  # of results.json: the report stage reruns when it changes

HEADER = ["model", "pretraining data", "DP ε (ledger, per patient)", "external bal. acc. [95% CI]",
          "external AUC [95% CI]", "bal. acc. at the hospitals", "MIA AUC [95% CI] (patient)",
          "MIA TPR at the finest resolvable FPR [95% CI]", "ε lower bound"]
CONSOLE_HEADER = ["model", "DP ε", "ext. bal. acc.", "ext. AUC", "at hospitals", "MIA AUC", "TPR (FPR)", "ε_lb"]


def _task_entry(results: list[dict[str, Any]], task: str) -> dict[str, Any]:
    return next(r for r in results if r["task"] == task)


def _metric(entry: Mapping[str, Any], key: str, ci_key: str = "ci") -> dict[str, Any]:
    ci = (entry.get(ci_key) or {}).get(key)
    return {"value": entry.get(key), "ci": list(ci) if ci else None}


def _results(audits: Mapping[str, str], name: str) -> dict[str, Any] | None:
    """An audit's results.json, or None where the study ran no such audit."""
    return load_results(audits[name]) if name in audits else None


def _mia(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    attack, e = strongest_attack(doc)
    return {"attack": attack, "level": doc["level"], "auc": {"value": e["auc"], "ci": e["ci"]["auc"]},
            "tpr": _finest_tpr(e),
            "confounded": bool(doc["confound"].get("confounded"))}


def _finest_tpr(e: dict[str, Any]) -> dict[str, Any]:
    """TPR at the finest FPR the non-members resolve (a TPR at 1% FPR means nothing with 20 non-members)."""
    f = metrics.finest_fpr(e)
    if f is None:
        return {"value": None, "fpr": None, "ci": None, "note": f"not resolvable with {e['n_nonmembers']} non-members"}
    return {"value": e[metrics.tpr_key(f)], "fpr": f, "ci": e["ci"][metrics.tpr_key(f)]}


def _eps_lb(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {"epsilon_lb": doc["epsilon_lb"], "theoretical": doc["theoretical"]["epsilon"],
            "how": f"{doc['threat']} {doc['method']}, {doc['config']['canaries']} canaries, "
                   f"{doc['config']['confidence']:.0%} confidence"}


@dataclass(frozen=True)
class Inputs:
    """What the headline is built from: the study's stage outputs it reads."""

    data: Cohorts
    synthesized: Synthesized
    evaluation: ResultsFile  # evaluate's results.json: every model zero-shot and by linear probe
    federations: dict[str, Federation]
    audits: dict[str, str]  # audit name -> its dir


def build(cfg: StudyConfig, inputs: Inputs) -> dict[str, Any]:
    """The study's results document (results.json): the headline rows, ratios and the epsilon sweep."""
    ev = json.loads(Path(inputs.evaluation.results).read_text())
    audits = inputs.audits
    rows: list[dict[str, Any]] = []
    corpus = inputs.synthesized.corpus
    synthetic_dp, synthetic_short = _synthetic_dp(inputs.synthesized.generator)
    for name in ("synthetic", "private"):
        ext = _task_entry(ev[name]["external_zero_shot"], cfg.task)
        hosp = _task_entry(ev[name]["hospitals_zero_shot"], cfg.task)
        rows.append({
            "model": name, "stage": "pretrained",
            "data": (f"synthetic corpus ({corpus.n} images)" if name == "synthetic"
                     else f"private cohort ({inputs.data.members.n} images)"),
            "dp": synthetic_dp if name == "synthetic" else "none (ε = ∞)",
            "dp_short": synthetic_short if name == "synthetic" else "∞",
            "ledger_epsilon": None,
            "external": {"balanced_accuracy": _metric(ext, "balanced_accuracy"), "auc": _metric(ext, "auc")},
            "hospitals_balanced_accuracy": hosp["balanced_accuracy"],
            "mia": _mia(_results(audits, f"mia-{name}")), "epsilon_lb": None,
        })
    for name, fed in inputs.federations.items():
        start = fed.rounds[0].get("balanced_accuracy") if fed.rounds else None
        end = fed.rounds[-1].get("balanced_accuracy") if fed.rounds else None
        ledger = fed.ledger_epsilon
        rows.append({
            "model": name, "stage": "federated", "base": fed.model,
            "data": f"{fed.model}, then {'DP ' if fed.dp else ''}federated fine-tuning on the members",
            "dp": _fed_dp(fed),
            "dp_short": (f"{ledger:.2f}" if ledger is not None else "-") if fed.dp else "∞",
            "ledger_epsilon": ledger, "requested_epsilon": None if math.isinf(fed.epsilon) else fed.epsilon,
            "external": {"balanced_accuracy": _metric(fed.external, "balanced_accuracy"),
                         "auc": _metric(fed.external, "auc")},
            "hospitals_balanced_accuracy": end, "hospitals_start": start,
            "finetuning_helped": None if start is None or end is None else end >= start,
            "mia": _mia(_results(audits, f"mia-{name}")),
            "epsilon_lb": _eps_lb(_results(audits, f"epsilon-{name}")),
        })
    by = {r["model"]: r for r in rows}
    ratios: dict[str, Any] = {
        "synthetic_over_private_external_balanced_accuracy":
            by["synthetic"]["external"]["balanced_accuracy"]["value"]
            / by["private"]["external"]["balanced_accuracy"]["value"],
        "mia_auc": {r["model"]: r["mia"]["auc"]["value"] for r in rows if r["mia"]},
        "epsilon_lb_over_ledger": {r["model"]: r["epsilon_lb"]["epsilon_lb"] / r["ledger_epsilon"]
                                   for r in rows if r["epsilon_lb"] and r["ledger_epsilon"]},
    }
    other = {kind: doc for kind in ("copying", "dejavu", "exposure") if (doc := _results(audits, kind)) is not None}
    return {"kind": "study", "format": FORMAT, "task": cfg.task, "external_hospital": cfg.external_hospital,
            "hospitals": ", ".join(cfg.hospital_names), "rows": rows, "ratios": ratios,
            "generator_fitted": inputs.synthesized.generator is not None,
            "privacy_unit": "patient; add/remove-one patient; Opacus RDP accountant via each node's ledger",
            "summaries": _summaries(other), "config": cfglib.plain(cfg)}


def _synthetic_dp(release: GeneratorRelease | None) -> tuple[str, str]:
    """What the synthetic-data model's DP column may say (long, short): no patient record trained it, but
    the corpus it trained on came from the members' statistics (exact or DP), or from outside the study."""
    if release is None:
        return ("not stated: a corpus brought in (study.synthetic_data); whether its generator saw patients, and "
                "under which guarantee, is for its maker to state", "?")
    if release.privacy is None:
        return ("none: no patient record trained it, but its generator's statistics are exact aggregates of the "
                "members (ε = ∞)", "∞ (gen.)")
    eps = release.privacy["epsilon"]
    return (f"no patient record trained it; generator statistics released with ε = {eps:g} per patient",
            f"{eps:g} (gen.)")


def _fed_dp(fed: Federation) -> str:
    if not fed.dp:
        return "none (ε = ∞)"
    text = f"{fed.ledger_epsilon:.2f}" if fed.ledger_epsilon is not None else "-"
    # the real-data model's pretraining saw the members without DP: the fine-tuning's epsilon bounds only
    # what fine-tuning adds
    return text + (" (fine-tuning; pretraining ε = ∞)" if fed.model == "private" else "")


def _summaries(other: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    if "copying" in other:
        d = other["copying"]
        out["copying"] = ("the synthetic corpus copies training patients: " + "; ".join(d["verdict"]["reasons"])
                          if d["verdict"]["copies"] else
                          f"no evidence that the synthetic corpus copies a member (C_T "
                          f"{d['three_sample_test']['c_t']:.2f}, {d['flags']['flagged']} near-copy flags)")
    if "dejavu" in other:
        d = other["dejavu"]
        g = d["gap"]
        out["dejavu"] = (f"déjà-vu ({d['attribute']}): real-data model vs a reference pretrained alike on held-out "
                         f"patients, balanced-accuracy gap {g['gap']:+.3f} "
                         f"[{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]" + (" — memorised" if d["memorised"] else ""))
    if "exposure" in other:
        d = other["exposure"]
        out["exposure"] = ("canaries exposed at repeats " + ", ".join(d["memorised_at_repeats"])
                           if d["memorised_at_repeats"] else "no canary exposed beyond the controls")
    return out


def _ci_text(m: Mapping[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    ci = m.get("ci")
    return f"{m['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table_rows(doc: Mapping[str, Any], compact: bool = False) -> list[list[str]]:
    """The headline rows as text; `compact` (the console) leaves out the data column and the CIs."""
    out = []
    for r in doc["rows"]:
        mia = r["mia"]
        hosp, start = r["hospitals_balanced_accuracy"], r.get("hospitals_start")
        ci = _ci_text if not compact else (lambda m: "-" if not m or m.get("value") is None else f"{m['value']:.3f}")
        row = [
            r["model"], r["data"], r["dp"], ci(r["external"]["balanced_accuracy"]), ci(r["external"]["auc"]),
            ("-" if hosp is None else f"{hosp:.3f}") + (f" (from {start:.3f})" if start is not None and not compact
                                                        else ""),
            ci(mia["auc"]) + (f" {mia['attack']}" if not compact else "") if mia else "-",
            (ci(mia["tpr"]) + (f" @{mia['tpr']['fpr']:.1%}" if mia["tpr"]["fpr"] else "")) if mia else "-",
            f"{r['epsilon_lb']['epsilon_lb']:.2f}" if r["epsilon_lb"] else "-",
        ]
        out.append([row[0], r["dp_short"], *row[3:]] if compact else row)
    return out


def _sweep_figure(doc: Mapping[str, Any]) -> bytes | None:
    fed = [r for r in doc["rows"] if r["stage"] == "federated"]
    if len({r.get("requested_epsilon") for r in fed}) < 2:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.2))
    for base in sorted({r["base"] for r in fed}):
        rs = sorted((r for r in fed if r["base"] == base), key=lambda r: r["requested_epsilon"] or math.inf)
        x = [r["requested_epsilon"] or 32.0 for r in rs]  # no DP drawn at the right edge
        left.plot(x, [r["hospitals_balanced_accuracy"] for r in rs], "o-", label=f"{base}: at the hospitals")
        left.plot(x, [r["external"]["balanced_accuracy"]["value"] for r in rs], "s--", label=f"{base}: external")
        right.plot(x, [r["mia"]["auc"]["value"] if r["mia"] else math.nan for r in rs], "o-", label=f"{base}: MIA AUC")
        right.plot(x, [r["epsilon_lb"]["epsilon_lb"] / 10 if r["epsilon_lb"] else math.nan for r in rs], "^:",
                   label=f"{base}: ε_lb / 10")
    for ax, title in ((left, "balanced accuracy"), (right, "leakage")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ledger ε per patient (rightmost: no DP)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    return figure_png(fig)


def headline_section(cfg: StudyConfig, doc: Mapping[str, Any]) -> Section:
    s = Section("Headline: synthetic vs real pretraining, with and without DP federated fine-tuning")
    r = doc["ratios"]
    s.paragraphs.append(
        f"Task: {doc['task']}. External hospital: {doc['external_hospital']} (a camera never trained on). Private "
        f"cohort at {doc['hospitals']}: members trained the real-data model, "
        + ("fitted the synthetic corpus's generator " if doc["generator_fitted"] else "")
        + "and fine-tuned the federated models; held-out patients of the same hospitals never trained anything and "
        "are the membership audits' non-members. "
        + ("" if doc["generator_fitted"] else "The synthetic corpus was brought in (study.synthetic_data): what its "
           "generator learned from, and from whom, this study does not know. ")
        + "Privacy unit: " + doc["privacy_unit"] + ".")
    eps = ", ".join(f"{k} {v:.2f}" for k, v in r["epsilon_lb_over_ledger"].items()) or "-"
    s.paragraphs.append(
        f"Synthetic ÷ real external balanced accuracy: {r['synthetic_over_private_external_balanced_accuracy']:.2f}. "
        "MIA AUC (patient level): " + ", ".join(f"{k} {v:.3f}" for k, v in r["mia_auc"].items())
        + f". ε lower bound ÷ ledger ε: {eps}.")
    for row in doc["rows"]:
        if row.get("finetuning_helped") is False:
            s.paragraphs.append(
                f"{row['model']}: federated fine-tuning ended below its zero-shot start at the hospitals "
                f"({row['hospitals_balanced_accuracy']:.3f} vs {row['hospitals_start']:.3f}); see the ε sweep and "
                "docs/experiments.md for where it starts to help.")
    s.paragraphs.append(
        "A federated model's MIA scores its fine-tuned task head (logit margin of the true class), which is what DP "
        "fine-tuning protects; what its base model's pretraining leaked stays in it and is that base model's row.")
    s.paragraphs += [f"{k}: {v}." for k, v in doc["summaries"].items()]
    s.tables.append(("one row per model; CIs are 95% bootstrap intervals; the real-data model's pretraining had "
                     "no DP, so DP fine-tuning bounds only what the fine-tuning adds", HEADER, table_rows(doc)))
    png = _sweep_figure(doc)
    if png:
        s.figures.append(("Utility and leakage against the ledger's ε (ε_lb drawn at 1/10 scale).", png))
    return s


def render(cfg: StudyConfig, doc: Mapping[str, Any], audits: Mapping[str, str], out: Path) -> dict[str, Path]:
    dirs = [Path(p) for p in audits.values()]
    return render_audits(dirs, out, title="fedclip study: synthetic vs real data, with and without DP",
                         lead=[headline_section(cfg, doc)], labels=list(audits), extra={"study": doc})
