"""The main job: synthetic vs real pretraining, with and without DP federated fine-tuning, quality and
leakage measured on the same private cohort, in one report.

    data        a private cohort at the training hospitals: members (they train) and held-out patients
                (never train), the hospitals' own test patients, an external hospital (another camera)
    synthesize  the Med-AIGC step: generator statistics estimated on the members, a synthetic corpus drawn
    pretrain    a synthetic-data model and a real-data model, pretrained identically
    evaluate    zero-shot and linear probe on the external hospital, zero-shot at the hospitals
    federate    DP fine-tuning of each model across the hospitals on Flower's simulation engine, one
                federation per (model, epsilon), each with its own fictional hospitals (policies, ledgers)
    audit       membership inference of every model against the cohort (members vs held-out patients),
                epsilon lower bounds of the DP federations, copying of the synthetic corpus, deja-vu,
                canary exposure where canaries were planted
    report      one report (HTML, PDF, JSON) whose first table is the headline

Every stage reads and writes the study dir (`experiments.runner`): a finished stage is skipped on re-run,
an interrupted one resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fedclip import config as cfglib
from fedclip import evaluate, io, models
from fedclip.audits.results import AuditError
from fedclip.errors import FedclipError
from fedclip.experiments import STUDIES_DIR, cohort_seed, headline
from fedclip.experiments.outputs import (
    AuditDir,
    Checkpoint,
    Cohorts,
    Dataset,
    Federation,
    GeneratorRelease,
    Pretrained,
    ResultsFile,
    StudyReport,
    Synthesized,
)
from fedclip.experiments.runner import STAGES_DIR, Stage, run_stages
from fedclip.federated.config import FederateConfig, federated_finetune
from fedclip.pretrain import PretrainConfig
from fedclip.run import RunDir

SECTION = "study"


def study_pretrain() -> PretrainConfig:
    """How both models pretrain by default: quickstart scale (`[study.pretrain]` changes it)."""
    return PretrainConfig(model="visionclip-tiny", steps=150, batch_size=64, lr=1e-3, warmup=15)


def study_federate() -> FederateConfig:
    """Each federation's settings by default (`[study.federate]`, `[study.federate.finetune]`). Measured on
    the quickstart (docs/experiments.md): SGD at lr 1.0, or no class prior, drives the DP head to the
    majority class (balanced accuracy 0.84 -> 0.50); AdamW at 1e-3 with the prior ends above the start.
    The prior is public: referable DR in about 1 in 10 people with diabetes (a published figure, not the
    cohort's); set it for another task, or none."""
    return FederateConfig(rounds=3, finetune=replace(federated_finetune(), optimizer="adamw", lr=1e-3,
                                                     class_prior=(0.9, 0.1)))


PRETRAIN_OWNED = {"data": "the study (members, synthetic corpus, held-out patients)", "synth": "the study",
                  "init": "the study", "seed": "study.seed"}
FEDERATE_OWNED = {"checkpoint": "the study (each model's pretrained checkpoint)", "data": "the study",
                  "eval_data": "the study", "out": "the study", "resume": "the study",
                  "clients": "study.hospitals", "partitioning": "the study (one client per hospital)",
                  "seed": "study.seed", "finetune.task": "study.task", "finetune.dp": "study.epsilons",
                  "finetune.epsilon": "study.epsilons"}
"""What the study sets in its pretraining and federations itself."""


@dataclass(frozen=True)
class StudyConfig:
    description: str = ""
    # --- data: a generated cohort ...
    hospitals: str = "riverside,northgate,summit"  # the private cohort's hospitals (one federation client each)
    external_hospital: str = "lakeshore"  # another camera profile, never trained on
    n_members: int = 1200  # images of patients who train (the real-data model, the generator fit, federation)
    n_holdout: int = 1200  # images of patients who never train the audited models: the audits' non-members
    # (and the data of the reference model that deja-vu and exposure compare against)
    n_test: int = 400  # the hospitals' own test patients: where federated fine-tuning is judged
    n_external: int = 400
    size: int = 64
    # ... or the user's own dataset dirs (any of them replaces the generated set; `fedclip data import`)
    private_data: Path | None = None
    holdout_data: Path | None = None
    test_data: Path | None = None
    external_data: Path | None = None
    synthetic_data: Path | None = None  # e.g. SynFundus-1M: then no generator is fitted
    # --- synthesize
    n_synthetic: int = 0  # 0: as many images as the members
    # release the generator's cohort statistics with DP (per patient, add/remove one; none: exact aggregates)
    generator_epsilon: float | None = None
    generator_delta: float = 1e-6
    # --- evaluate
    task: str = "referable_dr"  # the headline's task, and the federations'
    tasks: tuple[str, ...] = ("referable_dr", "dr_grade", "amd", "dme")
    probe: bool = True  # also a linear probe on the external hospital (representation vs zero-shot calibration)
    # --- federate: one federation per (model, epsilon)
    federate_models: tuple[str, ...] = ("synthetic", "private")
    epsilons: tuple[float, ...] = (8.0,)  # per patient, per hospital; inf: without DP
    # --- audit
    mia_attacks: tuple[str, ...] = ("loss", "lira")  # federated models; pretrained (CLIP) ones get the loss attack
    mia_refs: int = 4
    epsilon_canaries: int = 500
    copying: bool = True
    dejavu: bool = True
    # --- run
    workers: int = 2  # processes writing generated images
    seed: int = 0  # the study's data and initialisation; never DP noise or sampling
    # both models pretrain alike; `pretrain.canaries` go into the real-data model's pretraining only
    pretrain: PretrainConfig = field(default_factory=study_pretrain)
    federate: FederateConfig = field(default_factory=study_federate)  # every federation's settings

    @property
    def hospital_names(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.hospitals.split(",") if h.strip())

    def __post_init__(self) -> None:
        unknown = sorted(set(self.federate_models) - {"synthetic", "private"})
        if unknown:
            raise FedclipError(f"study.federate_models: {', '.join(unknown)} is not a model; use synthetic, private")
        if any(e <= 0 for e in self.epsilons):
            raise FedclipError("study.epsilons must be positive (inf for no DP)")
        if min(self.n_members, self.n_holdout, self.n_test, self.n_external) < 8:
            raise FedclipError("study.n_members, n_holdout, n_test and n_external need at least 8 images each")
        cfglib.refuse_owned(self.pretrain, study_pretrain(), PRETRAIN_OWNED, "study.pretrain")
        cfglib.refuse_owned(self.federate, study_federate(), FEDERATE_OWNED, "study.federate")


# ----------------------------------------------------------------------------------------- studies
def shipped() -> dict[str, str]:
    """Shipped studies: name -> their one-line description."""
    import tomllib

    out = {}
    for path in sorted(STUDIES_DIR.glob("*.toml")):
        tables = tomllib.loads(path.read_text())
        table = tables.get(SECTION) or tables.get("generator_study") or {}
        out[path.stem] = str(table.get("description", ""))
    return out


def study_file(name_or_path: str) -> Path:
    """A shipped study by name, or a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FedclipError(f"study file {path} not found")
        return path
    path = STUDIES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise FedclipError(f"no shipped study {name_or_path!r}; choose one of {', '.join(shipped())} or pass a "
                           "TOML file")
    return path


def load(name_or_path: str, overrides: tuple[str, ...] = ()) -> StudyConfig:
    return cfglib.load(StudyConfig, SECTION, study_file(name_or_path), overrides)


# --------------------------------------------------------------------------------------- helpers
def _eps_name(eps: float) -> str:
    return "nodp" if math.isinf(eps) else f"eps{eps:g}"


def federation_names(cfg: StudyConfig) -> list[tuple[str, str, float]]:
    """(run name, model, epsilon) of every federation the study runs."""
    return [(f"{m}-{_eps_name(e)}", m, e) for m in cfg.federate_models for e in cfg.epsilons]


# ---------------------------------------------------------------------------------------- stages
class Study:
    """The stages of one study in one dir; `run()` chains them."""

    def __init__(self, cfg: StudyConfig, root: str | Path, verbose: bool = False) -> None:
        self.cfg, self.root, self.verbose = cfg, Path(root), verbose

    def private_spec(self):  # noqa: ANN201 - CohortSpec, imported lazily (the generator pulls in numpy/PIL)
        from fedclip.synth import CohortSpec

        return CohortSpec(seed=cohort_seed(self.cfg.seed, "private"), size=self.cfg.size, hospital=self.cfg.hospitals)

    # 1 ------------------------------------------------------------------------------------------
    def data(self, _: Mapping[str, Any]) -> Cohorts:
        from fedclip.data.synthetic import ensure_exported
        from fedclip.synth import CohortSpec

        c, d = self.cfg, self.root / "data"
        base = self.private_spec()
        made = {
            "members": (c.private_data, base, c.n_members),
            "holdout": (c.holdout_data, replace(base, seed=cohort_seed(c.seed, "holdout")), c.n_holdout),
            "test": (c.test_data, replace(base, seed=cohort_seed(c.seed, "test")), c.n_test),
            "external": (c.external_data, CohortSpec(seed=cohort_seed(c.seed, "external"), size=c.size,
                                                    hospital=c.external_hospital),
                         c.n_external),
        }
        return Cohorts(**{name: Dataset.of(Path(given) if given else ensure_exported(spec, d / name, n, c.workers))
                          for name, (given, spec, n) in made.items()})

    # 2 ------------------------------------------------------------------------------------------
    def synthesize(self, up: Mapping[str, Any]) -> Synthesized:
        from fedclip.data.synthetic import ensure_exported
        from fedclip.synth import patient
        from fedclip.synth.estimate import estimate, synthetic_spec

        c = self.cfg
        if c.synthetic_data is not None:
            return Synthesized(Dataset.of(Path(c.synthetic_data)), generator=None)
        if c.private_data is not None:
            raise FedclipError("study.private_data is your own cohort: fitting the generator to it is not supported; "
                               "pass study.synthetic_data as well (e.g. SynFundus-1M, fedclip data import)")
        spec = self.private_spec()
        # the members' patients: what a data custodian measures on each (labels, grades, anatomy); only
        # aggregate statistics reach the generator (docs/architecture.md, "Med-AIGC")
        cohort = [patient(spec, i) for i in range(-(-c.n_members // spec.images_per_patient))]
        stats = estimate(cohort, hospitals=spec.hospitals, epsilon=c.generator_epsilon,
                         delta=c.generator_delta)
        io.write_json(self.root / "synthetic" / "cohort_statistics.json", asdict(stats))
        synth = synthetic_spec(stats, seed=cohort_seed(c.seed, "synthetic"), size=c.size, visits=spec.visits)
        data: Cohorts = up["data"]
        corpus = ensure_exported(synth, self.root / "synthetic" / "corpus", c.n_synthetic or data.members.n, c.workers)
        return Synthesized(Dataset.of(corpus), GeneratorRelease(
            str(self.root / "synthetic" / "cohort_statistics.json"), stats.privacy))

    # 3 ------------------------------------------------------------------------------------------
    def pretrain(self, up: Mapping[str, Any]) -> Pretrained:
        from fedclip.pretrain import ensure_pretrained

        c, cohorts, synthesized = self.cfg, up["data"], up["synthesize"]
        data = {"synthetic": synthesized.corpus.dir, "private": cohorts.members.dir}
        if c.dejavu or c.pretrain.canaries:
            # deja-vu and exposure compare the real-data model with one trained alike on *other* patients of
            # the same hospitals: what it knows about a member, the population teaches; the rest is memory
            data["reference"] = cohorts.holdout.dir
        out = {}
        for name, data_dir in data.items():
            run = self.root / "pretrain" / name
            pcfg = replace(c.pretrain, data=Path(data_dir), seed=c.seed,
                           batch_size=min(c.pretrain.batch_size, cohorts.members.n),
                           canaries=c.pretrain.canaries if name == "private" else 0)
            out[name] = Checkpoint.of(ensure_pretrained(pcfg, run), run)
        return Pretrained(**out)

    # 4 ------------------------------------------------------------------------------------------
    def evaluate(self, up: Mapping[str, Any]) -> ResultsFile:
        c, pretrained = self.cfg, up["pretrain"]
        path = self.root / "evaluate" / "results.json"
        if path.exists():
            return ResultsFile.of(path)
        contenders = {"synthetic": models.load_checkpoint(pretrained.synthetic.checkpoint),
                      "private": models.load_checkpoint(pretrained.private.checkpoint),
                      "untrained": models.create(c.pretrain.model, seed=c.seed)}
        external, test = up["data"].external.dir, up["data"].test.dir
        results: dict[str, Any] = {}
        for name, vc in contenders.items():
            feats = evaluate.dir_embeddings(vc, external)  # once for both modes
            results[name] = {
                "external_zero_shot": evaluate.evaluate_dir(vc, external, c.tasks, feats=feats),
                "external_linear_probe": evaluate.evaluate_dir(vc, external, c.tasks, mode="linear-probe",
                                                               seed=c.seed, feats=feats) if c.probe else [],
                "hospitals_zero_shot": evaluate.evaluate_dir(vc, test, (c.task,)),
            }
        io.write_json(path, results)
        return ResultsFile.of(path)

    # 5 ------------------------------------------------------------------------------------------
    def federate(self, up: Mapping[str, Any]) -> dict[str, Federation]:
        from fedclip.federated.policy import NodePolicy
        from fedclip.federated.simulation import simulate

        c, cohorts, pretrained = self.cfg, up["data"], up["pretrain"]
        finite = [e for e in c.epsilons if not math.isinf(e)]
        out = {}
        for name, model, eps in federation_names(c):
            dp = not math.isinf(eps)
            run = RunDir(self.root / "federate" / name)
            fed = replace(c.federate, checkpoint=Path(pretrained.model(model).checkpoint),
                          data=Path(cohorts.members.dir), eval_data=Path(cohorts.test.dir),
                          out=run.root, resume=run.state.exists(), clients=len(c.hospital_names),
                          partitioning="hospital", seed=c.seed
                          ).with_finetune(task=c.task, dp=dp, epsilon=eps if dp else 8.0)
            state = json.loads(run.state.read_text()) if run.state.exists() else {}
            if state.get("round", 0) < fed.rounds:
                # the study's own fictional hospitals, one set per federation: each federation is an
                # alternative world in which the consortium fine-tunes that one model (docs/experiments.md)
                policy = NodePolicy(dp_required=dp, max_epsilon=max(finite, default=8.0))
                simulate(fed, verbose=self.verbose,
                         state_root=self.root / "nodes" / name, policies=[policy] * fed.clients)
            last = Checkpoint.of(run.checkpoint())
            ext = evaluate.evaluate_dir(models.load_checkpoint(last.checkpoint), cohorts.external.dir, (c.task,))[0]
            out[name] = Federation(model=model, epsilon=eps, dp=dp, run=str(fed.out), checkpoint=last.checkpoint,
                                   weights_sha256=last.weights_sha256, external=ext, **_federation_result(fed.out))
        return out

    # 6 ------------------------------------------------------------------------------------------
    def audit(self, up: Mapping[str, Any]) -> dict[str, AuditDir]:
        from fedclip.audits.copying import CopyingConfig, run_copying
        from fedclip.audits.dejavu import DejavuConfig, run_dejavu
        from fedclip.audits.exposure import ExposureConfig, run_exposure
        from fedclip.audits.mia import MiaConfig, run_mia

        c, a = self.cfg, self.root / "audits"
        cohorts: Cohorts = up["data"]
        synthesized: Synthesized = up["synthesize"]
        pretrained: Pretrained = up["pretrain"]
        federations: dict[str, Federation] = up["federate"]
        members, holdout = cohorts.members.dir, cohorts.holdout.dir
        jobs: dict[str, Callable[[Path], Any]] = {}
        for model in ("synthetic", "private"):
            via = "generator" if model == "synthetic" else "training"
            jobs[f"mia-{model}"] = lambda out, m=model, v=via: run_mia(
                pretrained.model(m).checkpoint, members, holdout, None,
                MiaConfig(attacks=("loss",), level="patient", seed=c.seed, members_via=v), out)
        for name, fed in federations.items():
            attacks = tuple(c.mia_attacks)
            population = cohorts.test.dir if any(x.startswith("rmia") for x in attacks) else None
            jobs[f"mia-{name}"] = lambda out, f=fed, p=population, at=attacks: run_mia(
                f.checkpoint, members, holdout, p, MiaConfig(attacks=at, refs=c.mia_refs, level="patient",
                                                             seed=c.seed), out)
            if fed.dp:
                jobs[f"epsilon-{name}"] = lambda out, f=fed, n=name: _epsilon(f, self.root / "nodes" / n, c, out)
        if c.copying and synthesized.generator is not None:
            jobs["copying"] = lambda out: run_copying(synthesized.corpus.dir, members, holdout,
                                                      CopyingConfig(seed=c.seed), out)
        reference = pretrained.reference
        if c.dejavu and reference is not None:
            jobs["dejavu"] = lambda out: run_dejavu(pretrained.private.checkpoint, reference.checkpoint, members,
                                                    cohorts.external.dir, DejavuConfig(seed=c.seed), out)
        if c.pretrain.canaries and reference is not None:
            jobs["exposure"] = lambda out: run_exposure(pretrained.private.checkpoint, pretrained.private.run,
                                                        reference.checkpoint, ExposureConfig(seed=c.seed), out)
        from fedclip.progress import progress_bar

        with progress_bar("audits", len(jobs)) as advance:
            for name, job in jobs.items():
                if not (a / name / "results.json").exists():  # a finished audit of an interrupted stage is kept
                    job(a / name)
                advance(1)
        # each audit's results digest: the report reruns when an audit's results change
        return {name: AuditDir(str(a / name), ResultsFile.of(a / name / "results.json").sha256) for name in jobs}

    # 7 ------------------------------------------------------------------------------------------
    def report(self, up: Mapping[str, Any]) -> StudyReport:
        audits = {name: entry.dir for name, entry in up["audit"].items()}
        doc = headline.build(self.cfg, headline.Inputs(up["data"], up["synthesize"], up["evaluate"], up["federate"],
                                                       audits))
        io.write_json(self.root / "results.json", doc)
        paths = headline.render(self.cfg, doc, audits, self.root / "report")
        return StudyReport(results=str(self.root / "results.json"), **{k: str(v) for k, v in paths.items()})

    # --------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, r = self.cfg, self.root
        data_keys = ("hospitals", "external_hospital", "n_members", "n_holdout", "n_test", "n_external", "size",
                     "private_data", "holdout_data", "test_data", "external_data", "seed")
        pre_keys = ("pretrain", "dejavu", "seed")
        fed_keys = ("federate_models", "epsilons", "task", "federate", "seed")
        aud_keys = ("mia_attacks", "mia_refs", "epsilon_canaries", "copying", "dejavu", "seed")

        def pick(keys: tuple[str, ...]) -> dict[str, Any]:
            return {k: cfglib.to_toml_value(getattr(c, k)) for k in keys}

        return [
            Stage("data", self.data, Cohorts, pick(data_keys), dirs=(r / "data",),
                  describe="the private cohort (members, held-out patients), the hospitals' test patients, an "
                           "external hospital"),
            Stage("synthesize", self.synthesize, Synthesized,
                  pick(("n_synthetic", "synthetic_data", "generator_epsilon", "generator_delta", "seed", "size")),
                  reads=("data",), dirs=(r / "synthetic",),
                  describe="the Med-AIGC step: generator fitted to the members, a synthetic corpus"),
            Stage("pretrain", self.pretrain, Pretrained, pick(pre_keys), reads=("data", "synthesize"),
                  dirs=(r / "pretrain",),
                  describe="a synthetic-data and a real-data model (and a reference on other patients), pretrained "
                           "alike"),
            Stage("evaluate", self.evaluate, ResultsFile, pick(("tasks", "task", "probe", "seed")),
                  reads=("data", "pretrain"), dirs=(r / "evaluate",),
                  describe="zero-shot and linear probe on the external hospital"),
            Stage("federate", self.federate, dict[str, Federation], pick(fed_keys), reads=("data", "pretrain"),
                  dirs=(r / "federate", r / "nodes"),
                  describe="DP federated fine-tuning of each model across the hospitals"),
            Stage("audit", self.audit, dict[str, AuditDir], pick(aud_keys),
                  reads=("data", "synthesize", "pretrain", "federate"), dirs=(r / "audits",),
                  describe="membership, epsilon lower bounds, copying, deja-vu, exposure"),
            Stage("report", self.report, StudyReport, {**pick(("task", "description")), "format": headline.FORMAT},
                  reads=("data", "synthesize", "pretrain", "evaluate", "federate", "audit"), dirs=(r / "report",),
                  describe="the comparison report (HTML, PDF, JSON)"),
        ]

    def run(self, start_from: str | None = None, on_event: Callable[..., None] | None = None) -> dict[str, Any]:
        stages = self.stages()
        if start_from is not None and start_from not in [s.name for s in stages]:
            raise FedclipError(f"--from {start_from}: no such stage; the stages are "
                               f"{', '.join(s.name for s in stages)}")
        if self.root.is_dir() and not (self.root / STAGES_DIR).is_dir() and \
                any(p.name != "config.toml" for p in self.root.iterdir()):
            # a rerun or a change clears a stage's folders (data/, pretrain/, ...): never in someone else's dir
            raise FedclipError(f"{self.root} is not empty and holds no study; choose a new --out (a study writes "
                               "data/, pretrain/, federate/, audits/ ... into it)")
        cfglib.write(self.root / "config.toml", {SECTION: self.cfg})
        return run_stages(self.root, stages, start_from=start_from, on_event=on_event)


def _federation_result(out: Path) -> dict[str, Any]:
    """Per-round server evaluation at the hospitals' test patients and the nodes' ledger spend."""
    from fedclip.federated.simulation import summary
    from fedclip.run import largest_node_epsilon

    s = summary(out)
    rounds = [{"round": r.round, **{k: r.server[k] for k in ("balanced_accuracy", "auc") if k in r.server}}
              for r in s.rounds]
    return {"rounds": rounds, "ledger_epsilon": largest_node_epsilon(s.ledger),
            "ledger": [row.to_json() for row in s.ledger]}


def _epsilon(fed: Federation, nodes: Path, c: StudyConfig, out: Path) -> dict[str, Any]:
    """The one-run white-box bound of the mechanism a hospital deployed, replayed from its own ledger (its
    recorded rounds' noise, sampling and steps, per patient): the hospital that spent the most, so the bound
    is set against the ledger ε the headline shows. A re-run from the federation's settings would audit
    image-level training, not the patient-level mechanism the hospitals ran."""
    from fedclip.audits.epsilon import EpsilonConfig, prepare_deployed, run_epsilon

    clients = sorted(nodes.glob("client-*"))
    if not clients:
        raise AuditError(f"{nodes} holds no node state (client-K) to replay; run the study with --from federate")
    node = max(clients, key=_spent)
    training = prepare_deployed(fed.run, node)
    return run_epsilon(training, EpsilonConfig(canaries=c.epsilon_canaries, seed=c.seed), out,
                       source={"run": fed.run, "node": str(node), "data": f"the run's data, {node.name} partition"},
                       ledger_epsilon=training.ledger_epsilon)


def _spent(node: Path) -> float:
    """The largest cumulative ε in a node's ledgers (0 for a node that never trained)."""
    from fedclip.federated.ledger import read_entries

    return max((e.epsilon for path in node.glob("ledger-*.jsonl") for e in read_entries(path)), default=0.0)
