"""The memorization study: does a learned generator copy its patients, and what does DP cost downstream?

VisionCLIP's ethical claim is that images from a generator trained on private photographs protect the
patients it learned from. This study trains fedclip's learned generator on private cohorts of several
sizes, without DP and with patient-level DP at each epsilon, audits every generator against its own
patients and fresh ones (`fedclip.audits.generator`), and pretrains a CLIP model on the corpus of each
DP setting's largest-cohort generator, evaluated zero-shot at an external hospital beside a CLIP model
pretrained on the real cohort itself.

    data        a pool of private patients (the cohorts are its first n), fresh patients (the holdout), an
                external hospital with another camera
    gen-*       one generator per (cohort size, DP setting), plus the smallest cohort trained long
    audit-*     its audit: patient-level white/black-box MIA, near-copies, Fréchet distance
    clip-*      a CLIP model pretrained on a generator's corpus (largest cohort), and on the real cohort
    report      the table (markdown + JSON) and the figure: copy rate vs cohort size, a line per DP setting

Every stage is a runner stage: a finished one is skipped on re-run, an interrupted one resumes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedclip import config as cfglib
from fedclip import evaluate, io, models
from fedclip.data.records import Record, patient_key, read_metadata, write_metadata
from fedclip.data.synthetic import ensure_exported
from fedclip.errors import FedclipError
from fedclip.experiments import cohort_seed
from fedclip.experiments.outputs import ResultsFile
from fedclip.experiments.runner import Stage, run_stages
from fedclip.synth import CohortSpec

SECTION = "generator_study"
RESULTS_FILE = "generator_study.json"
TABLE_FILE = "generator_study.md"
FIGURE_FILE = "copy_rate.png"
CALIBRATED = ("white-box-calibrated", "black-box-domias")  # the attacks a population adds
IMAGES_PER_PATIENT = 4  # two eyes, two visits (the procedural cohort's default)


@dataclass(frozen=True)
class GeneratorStudyConfig:
    description: str = ""
    seed: int = 0  # cohorts, generator initialisation, sampling (never DP noise)
    hospitals: str = "riverside,northgate,summit"
    external_hospital: str = "lakeshore"
    cohort_sizes: tuple[int, ...] = (8, 32, 128)  # patients each generator trains on
    dp_epsilons: tuple[float, ...] = (8.0, 1.0)  # patient-level DP settings besides "no DP"
    delta: float = 1e-5
    config: str = "generator-tiny"
    steps: int = 600  # generator steps without DP
    dp_steps: int = 150  # with DP (noise is planned for them; each step clips every sampled patient)
    long_steps: int = 1500  # the smallest cohort, no DP, trained long: where memorization shows first
    batch_size: int = 16  # images per step; with DP, expected patients per step
    dp_images_per_patient: int = 2  # with DP: images of a patient per step (compute, not privacy)
    holdout_patients: int = 32  # fresh patients: the audits' non-members
    audit_patients: int = 32  # at most this many training patients audited per generator
    n_samples: int = 96  # generated images per audit
    refs: int = 0  # reference generators per audit (the calibrated attacks); 0: raw loss, DCR, copies only
    population_patients: int = 64  # the auditor's own patients, with refs > 0: references and DOMIAS draw on them
    sample_steps: int = 25  # DDIM steps
    corpus: int = 1000  # generated images a downstream CLIP model pretrains on
    pretrain_steps: int = 150
    n_external: int = 400
    task: str = "referable_dr"

    def __post_init__(self) -> None:
        if not self.cohort_sizes or min(self.cohort_sizes) < 2:
            raise FedclipError("generator_study.cohort_sizes needs sizes of at least 2 patients")
        if any(not e > 0 for e in self.dp_epsilons):
            raise FedclipError("generator_study.dp_epsilons must be positive (no DP is always included)")


def load(path: str | Path, overrides: tuple[str, ...] = ()) -> GeneratorStudyConfig:
    return cfglib.load(GeneratorStudyConfig, SECTION, path, overrides)


def _dp_name(eps: float) -> str:
    return "nodp" if math.isinf(eps) else f"eps{eps:g}"


@dataclass(frozen=True)
class Arm:
    """One generator of the study: a cohort size, a DP setting, a training length."""

    patients: int
    epsilon: float  # inf: no DP
    steps: int

    @property
    def name(self) -> str:
        return f"n{self.patients}-{_dp_name(self.epsilon)}-s{self.steps}"


def arms(c: GeneratorStudyConfig) -> list[Arm]:
    out = [Arm(n, math.inf, c.steps) for n in c.cohort_sizes]
    out += [Arm(n, e, c.dp_steps) for e in c.dp_epsilons for n in c.cohort_sizes]
    if c.long_steps and c.long_steps != c.steps:
        out.append(Arm(min(c.cohort_sizes), math.inf, c.long_steps))
    return out


# ------------------------------------------------------------------- what the stages hand each other
@dataclass(frozen=True)
class Cohort:
    """One training cohort (the pool's first n patients) and the part of it the audits score."""

    dir: str
    audited: str


@dataclass(frozen=True)
class StudyData:
    """`data`: the nested training cohorts by size, fresh patients, an external hospital."""

    cohorts: dict[str, Cohort]  # str(patients) -> cohort
    holdout: str
    external: str


@dataclass(frozen=True)
class Population:
    """`population`: the auditor's own patients (reference generators and DOMIAS draw on them)."""

    dir: str


@dataclass(frozen=True)
class TrainedGenerator:
    """`gen-*`: a generator's checkpoint, its weights' SHA-256 and its provenance's privacy statement."""

    checkpoint: str
    weights_sha256: str
    privacy: dict[str, Any]


@dataclass(frozen=True)
class DownstreamClip:
    """`clip-*`: a CLIP model pretrained on a corpus, zero-shot at the external hospital."""

    checkpoint: str
    corpus: str
    corpus_images: int
    balanced_accuracy: float
    n: int
    ci: dict[str, list[float]]
    auc: float | None = None  # None where the external set has one class for the task


@dataclass(frozen=True)
class GeneratorReport:
    """`report`: the study's results, table and figure."""

    results: str
    table: str
    figure: str


def _spec(c: GeneratorStudyConfig, role: str, hospital: str | None = None) -> CohortSpec:
    """The study's `role` cohort (pool, holdout, external, population) at 64 px."""
    return CohortSpec(seed=cohort_seed(c.seed, f"generator-{role}"), size=64, hospital=hospital or c.hospitals)


class GeneratorStudy:
    def __init__(self, cfg: GeneratorStudyConfig, root: str | Path) -> None:
        self.cfg, self.root = cfg, Path(root)

    # ---------------------------------------------------------------------------------- stages
    def stages(self) -> list[Stage]:
        c, r = self.cfg, self.root
        plain = cfglib.plain(c)
        data_keys = ("seed", "hospitals", "external_hospital", "cohort_sizes", "holdout_patients", "n_external")
        out = [Stage("data", self._data, StudyData, {k: plain[k] for k in data_keys}, dirs=(r / "data",),
                     describe="private patients, fresh patients, an external hospital")]
        gen_keys = ("config", "batch_size", "dp_images_per_patient", "delta", "seed")
        audit_keys = ("holdout_patients", "audit_patients", "n_samples", "sample_steps", "seed", "refs")
        audit_reads: tuple[str, ...] = ("data",)
        if c.refs:
            out.append(Stage("population", self._population, Population,
                             {k: plain[k] for k in ("seed", "hospitals", "population_patients")},
                             dirs=(r / "population",), describe="the auditor's own patients (reference cohorts)"))
            audit_reads = ("data", "population")
        for arm in arms(c):
            settings = {**{k: plain[k] for k in gen_keys}, "arm": arm.name}
            out.append(Stage(f"gen-{arm.name}", lambda up, a=arm: self._generator(a, up), TrainedGenerator, settings,
                             reads=("data",),
                             dirs=(r / "generators" / arm.name, r / "nodes" / arm.name),
                             describe=f"train the generator on {arm.patients} patients, "
                                      f"{'no DP' if math.isinf(arm.epsilon) else f'DP eps {arm.epsilon:g}'}, "
                                      f"{arm.steps} steps"))
            out.append(Stage(f"audit-{arm.name}", lambda up, a=arm: self._audit(a, up), ResultsFile,
                             {k: plain[k] for k in audit_keys}, reads=(*audit_reads, f"gen-{arm.name}"),
                             dirs=(r / "audits" / arm.name,), describe=f"audit generator {arm.name}"))
        largest = max(c.cohort_sizes)
        clip_keys = ("corpus", "pretrain_steps", "sample_steps", "task", "seed")
        downstream = [a for a in arms(c) if a.patients == largest and a.steps in (c.steps, c.dp_steps)]
        for arm in downstream:
            out.append(Stage(f"clip-{arm.name}", lambda up, a=arm: self._clip(a.name, up), DownstreamClip,
                             {k: plain[k] for k in clip_keys}, reads=("data", f"gen-{arm.name}"),
                             dirs=(r / "clip" / arm.name,), describe=f"CLIP on generator {arm.name}'s corpus"))
        out.append(Stage("clip-real", lambda up: self._clip("real", up), DownstreamClip,
                         {k: plain[k] for k in clip_keys},
                         reads=("data",), dirs=(r / "clip" / "real",),
                         describe=f"CLIP on the {largest} real patients themselves"))
        reads = tuple(s.name for s in out if s.name.startswith(("audit-", "clip-")))
        out.append(Stage("report", self._report, GeneratorReport, plain, reads=("data", *reads), dirs=(r / "report",),
                         describe="table and figure"))
        return out

    def run(self, start_from: str | None = None, on_event: Any = None) -> dict[str, Any]:
        cfglib.write(self.root / "config.toml", {SECTION: self.cfg})
        return run_stages(self.root, self.stages(), start_from=start_from, on_event=on_event)

    # ------------------------------------------------------------------------------ stage bodies
    def _data(self, up: dict) -> StudyData:
        c, d = self.cfg, self.root / "data"
        largest = max(c.cohort_sizes)
        pool = ensure_exported(_spec(c, "pool"), d / "pool", largest * IMAGES_PER_PATIENT)
        holdout = ensure_exported(_spec(c, "holdout"), d / "holdout", c.holdout_patients * IMAGES_PER_PATIENT)
        external = ensure_exported(_spec(c, "external", c.external_hospital), d / "external", c.n_external)
        rows = read_metadata(pool)
        patients: list[str] = []
        for r in rows:
            if r.meta["patient_id"] not in patients:
                patients.append(r.meta["patient_id"])
        cohorts = {}
        for n in c.cohort_sizes:  # the first n patients of the pool (nested cohorts)
            keep = set(patients[:n])
            cohort = d / f"cohort-{n}"
            if not (cohort / "metadata.csv").exists():
                write_metadata(cohort, [Record(str(r.path(pool)), r.caption, r.labels, r.meta) for r in rows
                                        if r.meta["patient_id"] in keep])
            audited = set(patients[:min(n, c.audit_patients)])
            sub = d / f"audited-{n}"
            if not (sub / "metadata.csv").exists():
                write_metadata(sub, [Record(str(r.path(pool)), r.caption, r.labels, r.meta) for r in rows
                                     if r.meta["patient_id"] in audited])
            cohorts[str(n)] = Cohort(str(cohort), str(sub))
        return StudyData(cohorts, str(holdout), str(external))

    def _population(self, up: dict) -> Population:
        c = self.cfg  # a cohort seed of its own: neither the private pool, the holdout nor the external hospital
        pop = ensure_exported(_spec(c, "population"), self.root / "population",
                              c.population_patients * IMAGES_PER_PATIENT)
        return Population(str(pop))

    def _generator(self, arm: Arm, up: dict) -> TrainedGenerator:
        from fedclip.generate.train import GeneratorTrainConfig, ensure_generator

        c = self.cfg
        dp = not math.isinf(arm.epsilon)
        state = self.root / "nodes" / arm.name  # each arm is its own hospital, with its own ledger
        if dp:  # the hospital declares its number of patients public (so q is not charged a noisy count)
            io.write_text(state / "policy.toml", f"[policy]\ndataset_size = {arm.patients}\n")
        cfg = GeneratorTrainConfig(
            data=Path(up["data"].cohorts[str(arm.patients)].dir), config=c.config, steps=arm.steps,
            batch_size=min(c.batch_size, arm.patients) if dp else c.batch_size, seed=c.seed, save_every=0,
            hospitals=tuple(h.strip() for h in c.hospitals.split(",")),
            epsilon=arm.epsilon if dp else None, delta=c.delta, state_dir=state if dp else None,
            max_images_per_patient=c.dp_images_per_patient if dp else 4)
        ckpt = ensure_generator(cfg, self.root / "generators" / arm.name)
        from fedclip.generate.model import read_generator_config

        gcfg = read_generator_config(ckpt)
        return TrainedGenerator(str(ckpt), gcfg["weights_sha256"], gcfg["provenance"]["privacy"])

    def _audit(self, arm: Arm, up: dict) -> ResultsFile:
        from fedclip.audits.generator import GeneratorAuditConfig, run_generator_audit
        from fedclip.audits.results import RESULTS_FILE as AUDIT_RESULTS

        c, data = self.cfg, up["data"]
        out = self.root / "audits" / arm.name
        if not (out / AUDIT_RESULTS).exists():
            run_generator_audit(up[f"gen-{arm.name}"].checkpoint, data.cohorts[str(arm.patients)].audited,
                                data.holdout, out, GeneratorAuditConfig(n_samples=c.n_samples,
                                                                        sample_steps=c.sample_steps, seed=c.seed,
                                                                        n_boot=500, refs=c.refs),
                                population=up["population"].dir if c.refs else None)
        return ResultsFile.of(out / AUDIT_RESULTS)

    def _clip(self, name: str, up: dict) -> DownstreamClip:
        from fedclip.generate.sample import SampleConfig, sample_dataset
        from fedclip.pretrain import PretrainConfig, ensure_pretrained

        c, d, data = self.cfg, self.root / "clip" / name, up["data"]
        if name == "real":
            corpus = Path(data.cohorts[str(max(c.cohort_sizes))].dir)
        else:
            corpus = d / "corpus"
            if not (corpus / "metadata.csv").exists():
                sample_dataset(up[f"gen-{name}"].checkpoint, corpus,
                               SampleConfig(n=c.corpus, seed=c.seed, steps=c.sample_steps))
        images = len(read_metadata(corpus))
        ckpt = ensure_pretrained(PretrainConfig(data=corpus, steps=c.pretrain_steps, batch_size=min(64, images),
                                                lr=1e-3, warmup=10, workers=0, seed=c.seed), d / "run")
        ext = read_metadata(data.external)
        vc = models.load_checkpoint(ckpt)
        res = evaluate.zero_shot(vc, [r.path(data.external) for r in ext], [r.labels for r in ext], c.task,
                                 n_boot=500, patients=[patient_key(r) for r in ext])
        return DownstreamClip(str(ckpt), str(corpus), images, res["balanced_accuracy"], res["n"],
                              {k: list(v) for k, v in res["ci"].items() if k in ("balanced_accuracy", "auc")},
                              auc=res.get("auc"))

    def _report(self, up: dict) -> GeneratorReport:
        c, out = self.cfg, self.root / "report"
        rows = []
        for arm in arms(c):
            doc = json.loads(Path(up[f"audit-{arm.name}"].results).read_text())
            white, black = doc["attacks"]["white-box-loss"]["patient"], doc["attacks"]["black-box-dcr"]["patient"]
            privacy = doc["target"]["privacy"]
            rows.append({
                "generator": arm.name, "patients": arm.patients, "dp": _dp_name(arm.epsilon), "steps": arm.steps,
                "epsilon_spent": privacy.get("epsilon") if privacy.get("dp") else None,
                "copy_rate": doc["copying"]["flags"]["rate"], "flagged": doc["copying"]["flags"]["flagged"],
                "n_samples": doc["data"]["n_samples"], "alpha": doc["copying"]["flags"]["alpha"],
                "patients_copied": doc["copies_per_patient"]["patients_with_copies"],
                "patients_audited": doc["copies_per_patient"]["of_patients"],
                "c_t": doc["copying"]["three_sample_test"]["c_t"],
                "white_box_auc": white["auc"], "white_box_ci": white["ci"]["auc"],
                "black_box_auc": black["auc"], "black_box_ci": black["ci"]["auc"],
                **{f"{k.replace('-', '_')}_auc": doc["attacks"][k]["patient"]["auc"] for k in CALIBRATED
                   if k in doc["attacks"]},
                **{f"{k.replace('-', '_')}_ci": doc["attacks"][k]["patient"]["ci"]["auc"] for k in CALIBRATED
                   if k in doc["attacks"]},
                "frechet_samples": doc["fidelity"]["frechet_samples_to_holdout"],
                "frechet_real": doc["fidelity"]["frechet_members_to_holdout"],
                "verdict": "copies" if doc["verdict"]["copies"] else "no evidence"})
        downstream = {name.removeprefix("clip-"): asdict(out_) for name, out_ in up.items() if name.startswith("clip-")}
        result = {"config": cfglib.plain(c), "generators": rows, "downstream": downstream,
                  "unit": "patient", "neighbouring": "add/remove-one patient", "delta": c.delta}
        io.write_json(out / RESULTS_FILE, result)
        io.write_text(out / TABLE_FILE, markdown(result))
        figure(rows, out / FIGURE_FILE)
        return GeneratorReport(str(out / RESULTS_FILE), str(out / TABLE_FILE), str(out / FIGURE_FILE))


def _ci(ci: list[float] | None) -> str:
    return f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "no CI: one class"


def markdown(result: dict[str, Any]) -> str:
    """The study's table as markdown (what docs/results holds)."""
    lines = ["| generator | patients | DP | steps | ε spent | near-copies (rate) | patients copied | "
             "white-box AUC (95% CI) | black-box AUC (95% CI) | Fréchet samples / real | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["generators"]:
        eps = f"{r['epsilon_spent']:.2f}" if r["epsilon_spent"] is not None else "∞ (no DP)"
        lines.append(f"| {r['generator']} | {r['patients']} | {r['dp']} | {r['steps']} | {eps} | "
                     f"{r['flagged']}/{r['n_samples']} ({r['copy_rate']:.1%}) | {r['patients_copied']}/"
                     f"{r['patients_audited']} | {r['white_box_auc']:.2f} ({_ci(r['white_box_ci'])}) | "
                     f"{r['black_box_auc']:.2f} ({_ci(r['black_box_ci'])}) | {r['frechet_samples']:.3f} / "
                     f"{r['frechet_real']:.3f} | {r['verdict']} |")
    calibrated = [r for r in result["generators"] if "white_box_calibrated_auc" in r]
    if calibrated:
        lines += ["", "| generator | calibrated white-box AUC (LiRA, 95% CI) | DOMIAS AUC (95% CI) |", "|---|---|---|"]
        lines += [f"| {r['generator']} | {r['white_box_calibrated_auc']:.2f} ({_ci(r['white_box_calibrated_ci'])}) | "
                  f"{r['black_box_domias_auc']:.2f} ({_ci(r['black_box_domias_ci'])}) |" for r in calibrated]
    lines += ["", "| CLIP pretrained on | images | zero-shot balanced accuracy (95% CI) | AUC (95% CI) |",
              "|---|---|---|---|"]
    for name, d in sorted(result["downstream"].items()):
        ba, auc = d["balanced_accuracy"], d.get("auc")
        lines.append(f"| {name} | {d['corpus_images']} | {ba:.3f} ({_ci(d['ci'].get('balanced_accuracy'))}) | "
                     + (f"{auc:.3f} ({_ci(d['ci'].get('auc'))})" if auc is not None else "-") + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Left: copy rate against cohort size; right: white-box membership AUC with its CI; one line per DP
    setting at the main training length, a star for the smallest cohort trained long."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    main: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        main.setdefault(r["dp"], {}).setdefault(r["patients"], r)
    styles = {"nodp": ("o", "-", 1.0), "eps8": ("s", "--", 1.08), "eps1": ("^", ":", 1.16)}
    for i, (dp, by) in enumerate(main.items()):
        marker, line, shift = styles.get(dp, ("d", "-.", 1.0 + 0.08 * i))
        xs = sorted(by)
        label = "no DP" if dp == "nodp" else f"DP ε = {dp.removeprefix('eps')}"
        left.plot([x * shift for x in xs], [by[x]["copy_rate"] for x in xs], marker=marker, ls=line, label=label)
        auc = [by[x]["white_box_auc"] for x in xs]
        err = [[a - by[x]["white_box_ci"][0] for a, x in zip(auc, xs, strict=True)],
               [by[x]["white_box_ci"][1] - a for a, x in zip(auc, xs, strict=True)]]
        right.errorbar([x * shift for x in xs], auc, yerr=err, marker=marker, ls=line, capsize=3, label=label)
    for r in rows:
        if r["dp"] == "nodp" and main["nodp"][r["patients"]] is not r:
            left.scatter([r["patients"]], [r["copy_rate"]], marker="*", s=140, color="black", zorder=3,
                         label=f"no DP, {r['steps']} steps")
            right.errorbar([r["patients"]], [r["white_box_auc"]], yerr=[[r["white_box_auc"] - r["white_box_ci"][0]],
                           [r["white_box_ci"][1] - r["white_box_auc"]]], marker="*", ms=12, color="black",
                           capsize=3, label=f"no DP, {r['steps']} steps")
    alpha = rows[0]["alpha"]
    left.axhline(alpha, color="grey", linestyle=":", label=f"fresh patients' flag rate ({alpha:.1%})")
    right.axhline(0.5, color="grey", linestyle=":", label="chance")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("patients the generator trained on")
    left.set_ylabel("samples flagged as near-copies")
    left.set_title("near-copies among the samples", fontsize=10)
    right.set_ylabel("white-box membership AUC (patient, 95% CI)")
    right.set_title("membership inference against the generator", fontsize=10)
    left.legend(fontsize=7)
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    io.write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    return path


def is_generator_study(path: str | Path) -> bool:
    """Whether a study file holds a `[generator_study]` table (else it is a `[study]`)."""
    import tomllib

    return SECTION in tomllib.loads(Path(path).read_text())
