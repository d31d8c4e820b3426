"""`fedclip` commands. Each parses flags, calls one library function and prints the result;
a `FedclipError` becomes a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedclip import io, progress
from fedclip.errors import FedclipError

app = typer.Typer(no_args_is_help=True, suggest_commands=False,
                  help="fedclip: synthetic-data retinal CLIP models, federated DP fine-tuning, privacy audits.")
console = Console()


def _fail(err: FedclipError) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        from fedclip import __version__

        console.print(f"fedclip {__version__}")
        raise typer.Exit()


@app.callback()
def _main(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print fedclip's version and exit.")] = False) -> None:
    progress.enable(not quiet)


@app.command()
def synth(
    out: Annotated[Path | None, typer.Option(help="Dataset dir to write (images/ + metadata.csv).")] = None,
    n: Annotated[int, typer.Option(help="Number of images.")] = 1000,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Cohort seed: same seed, same patients and images.")] = 0,
    hospital: Annotated[str | None, typer.Option(
        help="Hospital/camera profile (riverside, northgate, lakeshore, summit); default: all, mixed.")] = None,
    visits: Annotated[int, typer.Option(help="Images per eye (visits).")] = 2,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    image_format: Annotated[str, typer.Option("--format", help="png (lossless) or jpg.")] = "png",
    preview: Annotated[Path | None, typer.Option(
        help="Instead of a dataset, write a labelled contact sheet (one tile per condition) to this PNG.")] = None,
    generator: Annotated[Path | None, typer.Option(
        help="Sample this learned generator (RUN/checkpoints/last of `fedclip generator train`) instead of the "
             "procedural renderer; --size and --hospital then come from the generator.")] = None,
    steps: Annotated[int, typer.Option(help="With --generator: DDIM denoising steps.")] = 50,
    guidance: Annotated[float, typer.Option(
        help="With --generator: classifier-free guidance scale (1: conditional only).")] = 1.0,
) -> None:
    """Generate synthetic fundus image-caption pairs (procedural renderer, or a learned --generator)."""
    from fedclip.synth import CohortSpec

    try:
        if generator is not None:
            if out is None:
                raise FedclipError("pass --out DIR: the dataset dir to write the generator's samples to")
            from fedclip.generate.sample import SampleConfig, sample_dataset

            path = sample_dataset(generator, out, SampleConfig(n=n, seed=seed, steps=steps, guidance=guidance))
            console.print(f"wrote {n} generated images and {path / 'metadata.csv'} (provenance: "
                          f"{path / 'provenance.json'})")
            return
        if preview is not None:
            from fedclip.synth.preview import contact_sheet

            console.print(f"wrote {contact_sheet(preview, size=size, seed=seed)}")
            return
        if out is None:
            raise FedclipError("pass --out DIR (a dataset dir to write) or --preview FILE.png")
        from fedclip.data.synthetic import export

        path = export(CohortSpec(seed=seed, size=size, hospital=hospital, visits=visits), out, n,
                      workers=workers, fmt=image_format)
        console.print(f"wrote {n} images and {path}")
    except FedclipError as e:
        _fail(e)


generator_app = typer.Typer(no_args_is_help=True, suggest_commands=False,
                            help="The learned Med-AIGC generator: a label-conditioned "
                            "diffusion model trained on a dataset dir (sample it with `fedclip synth --generator`).")
app.add_typer(generator_app, name="generator")


@generator_app.command("train")
def generator_train(
    out: Annotated[Path, typer.Option(help="Run dir (config.toml, metrics.jsonl, members.csv, checkpoints/last).")],
    data: Annotated[Path | None, typer.Option(help="Dataset dir to learn from.")] = None,
    model: Annotated[str | None, typer.Option(
        "--config", help="Registered generator config: generator-tiny (32 px, CPU) | generator-base (128 px, GPU). "
                         "[default: generator-tiny]")] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels \\[default: the config's].")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps. \\[default: 2000]")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per step; with DP, expected patients per step. \\[default: 16]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate. \\[default: 0.001]")] = None,
    epsilon: Annotated[float | None, typer.Option(
        help="Train with patient-level DP-SGD to this lifetime epsilon (charged to the hospital's ledger); "
             "without it the generator is trained without DP.")] = None,
    delta: Annotated[float | None, typer.Option(help="DP delta. \\[default: 1e-5]")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="The hospital's node state dir (policy.toml, lifetime ledger) \\[default: ~/.fedclip/node].")] = None,
    save_every: Annotated[int | None, typer.Option(help="Also checkpoint every N steps. \\[default: 500]")] = None,
    seed: Annotated[int | None, typer.Option(help="Initialisation, batch order, timesteps (never DP noise).")] = None,
    config_file: Annotated[Path | None, typer.Option(help="TOML file with a \\[generator] table.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override: generator.NAME=VALUE (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Train the learned generator (DDPM objective, EMA; patient-level DP with --epsilon)."""
    from fedclip import config as cfglib
    from fedclip.generate.train import GeneratorTrainConfig, train_generator

    try:
        file = config_file if config_file is not None else (out / "config.toml" if resume else None)
        cfg = cfglib.load(GeneratorTrainConfig, "generator", file, set_ or (), data=data, config=model, size=size,
                          steps=steps, batch_size=batch_size, lr=lr, epsilon=epsilon, delta=delta,
                          state_dir=state_dir, save_every=save_every, seed=seed)
        result = train_generator(cfg, out, resume=resume)
    except FedclipError as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(out)
    privacy = "trained without DP"
    if result["dp"]:
        privacy = (f"patient-level DP (add/remove-one patient), lifetime ε = {result['epsilon']:.3f}, "
                   f"δ = {cfg.delta:g}")
    console.print(f"{result['steps']} steps in {result['seconds']:.0f} s; {privacy}; "
                  f"checkpoint: {result['checkpoint']}")


@app.command("import-open-clip")
def import_open_clip_cmd(
    source: Annotated[Path, typer.Argument(help="An open_clip model dir (open_clip_config.json + "
                                                "open_clip_model.safetensors or open_clip_pytorch_model.bin) or "
                                                "open_clip_train's epoch_N.pt.")],
    out: Annotated[Path, typer.Option(help="The fedclip checkpoint dir to write.")],
    model: Annotated[str | None, typer.Option(help="Architecture (fedclip or open_clip name, e.g. ViT-B-32); "
                                                   "required for epoch_N.pt, which does not record it.")] = None,
) -> None:
    """Convert an open_clip checkpoint into a fedclip one (safetensors, hashed); nothing is downloaded."""
    from fedclip.interop import import_open_clip

    try:
        path = import_open_clip(source, out, model)
    except FedclipError as e:
        _fail(e)
    console.print(f"wrote {path}; use it as --init or --checkpoint")


data_app = typer.Typer(no_args_is_help=True, suggest_commands=False,
                            help="Datasets on disk: import public sets, inspect dataset dirs.")
app.add_typer(data_app, name="data")


@data_app.command("import")
def data_import(
    name: Annotated[str, typer.Argument(help="folder (any image folder: your own data), synfundus, flair, "
                                             "messidor2, fives, refuge, odir, aptos or idrid.")],
    root: Annotated[Path, typer.Argument(help="The images' folder (searched recursively), or the public "
                                              "dataset's folder as downloaded.")],
    out: Annotated[Path, typer.Option(help="Dataset dir to write (metadata.csv; images stay where they are).")],
    labels: Annotated[Path | None, typer.Option(
        help="folder: a CSV with one row per image (column file_name, filepath or image), labels and meta named "
             "like fedclip's; default ROOT/metadata.csv if there (a Hugging Face imagefolder).")] = None,
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="folder: COLUMN=FIELD, a CSV column read as a fedclip label or meta field (repeatable).")] = None,
    patient_id: Annotated[str | None, typer.Option(
        help="folder: the CSV column holding patient ids (privacy figures are per patient only with them).")] = None,
    folder_label: Annotated[str | None, typer.Option(
        help="folder: sub-folder names are this label's values (ROOT/0/..., ROOT/2/... for dr_grade).")] = None,
    original_text: Annotated[bool, typer.Option(help="SynFundus-1M: keep its own captions.")] = False,
    ignore: Annotated[list[str] | None, typer.Option(help="SynFundus-1M: is_* columns to skip.")] = None,
) -> None:
    """Index your own image folder or a public dataset into fedclip's dataset-dir format (images stay in place)."""
    try:
        if name == "folder":
            from fedclip.data.folder import import_folder, parse_map

            path, result = import_folder(root, out, labels=labels, mapping=parse_map(map_ or []),
                                         patient_id=patient_id, folder_label=folder_label)
            for w in result.warnings:
                console.print(f"[yellow]warning:[/] {escape(w)}")
        else:
            from fedclip.data.public import import_dataset

            kwargs = {"original_text": original_text, "ignore": tuple(ignore or ())} if name == "synfundus" else {}
            path = import_dataset(name, root, out, **kwargs)
    except FedclipError as e:
        _fail(e)
    console.print(f"wrote {path}")


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="A dataset dir.")],
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    show: Annotated[int, typer.Option(help="Undecodable images to list.")] = 20,
) -> None:
    """Decode every image of a dataset dir (and check its metadata); exit 2 if any image is broken."""
    from fedclip.data.check import metadata_warnings, undecodable

    try:
        total, bad = undecodable(path, workers=workers)
        warnings = metadata_warnings(path)
    except FedclipError as e:
        _fail(e)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    if not bad:
        console.print(f"all {total} images decode; the metadata is consistent"
                      + (" (see the warnings above)" if warnings else ""))
        return
    for rel, _ in bad[:show]:
        console.print(f"cannot be decoded: {escape(rel)}")
    more = f" (the first {show} listed)" if len(bad) > show else ""
    _fail(FedclipError(f"{len(bad)} of {total} images cannot be decoded{more}; re-export or re-download them, "
                       f"or remove their rows from {path / 'metadata.csv'}"))


@data_app.command("info")
def data_info(path: Annotated[Path, typer.Argument(help="A dataset dir.")]) -> None:
    """Count images, patients, hospitals and positives per label in a dataset dir."""
    from collections import Counter

    from fedclip.data.records import read_metadata

    try:
        records = read_metadata(path)
    except FedclipError as e:
        _fail(e)
    table = Table(title=f"{path}: {len(records)} images, "
                        f"{len({r.meta.get('patient_id') for r in records})} patients")
    table.add_column("label")
    table.add_column("known")
    table.add_column("positive / distribution")
    keys = sorted({k for r in records for k in r.labels})
    for k in keys:
        vals = Counter(r.labels[k] for r in records if k in r.labels)
        shown = " ".join(f"{v}:{c}" for v, c in sorted(vals.items())) if k == "dr_grade" else str(vals.get(1, 0))
        table.add_row(k, str(sum(vals.values())), shown)
    hospitals = Counter(r.meta.get("hospital", "-") for r in records)
    console.print(table)
    console.print("hospitals: " + ", ".join(f"{h} {c}" for h, c in sorted(hospitals.items())))


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option(help="Run directory (config.toml, metrics.jsonl, checkpoints/).")],
    data: Annotated[Path | None, typer.Option(help="Dataset dir to train on.")] = None,
    synth: Annotated[str | None, typer.Option(
        help='Generator stream instead of a dataset dir, e.g. "n=20000 seed=0 size=64 hospital=riverside".')] = None,
    model: Annotated[str | None, typer.Option(help="visionclip-tiny | visionclip-small | visionclip-base.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps. \\[default: 200]")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Global batch size (split across processes). \\[default: 64]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate. \\[default: 0.0005]")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loader worker processes.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | bf16 | fp16.")] = None,
    save_every: Annotated[int | None, typer.Option(
        help="Also keep a checkpoint every N steps. \\[default: 0, none]")] = None,
    save_minutes: Annotated[float | None, typer.Option(
        help="Refresh checkpoints/last, the --resume point, every N minutes (0: only at the end). "
             "\\[default: 10]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation, data order, augmentation.")] = None,
    init: Annotated[Path | None, typer.Option(help="Start from this checkpoint's weights.")] = None,
    canaries: Annotated[int | None, typer.Option(
        help="Plant N canaries with secret codes (and N never-trained controls) for `audit exposure`.")] = None,
    canary_repeats: Annotated[str | None, typer.Option(
        help="Times each planted canary is repeated, cycling: e.g. 1,4,16 (the default).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with a \\[pretrain] table.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: pretrain.NAME=VALUE (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Contrastive pretraining (CPU, GPU with AMP, or multi-GPU under torchrun)."""
    from fedclip import config as cfglib
    from fedclip.pretrain import PretrainConfig
    from fedclip.pretrain import pretrain as run_pretrain

    try:
        file = config if config is not None else (out / "config.toml" if resume else None)
        cfg = cfglib.load(PretrainConfig, "pretrain", file, set_ or (), data=data, synth=synth, model=model,
                          steps=steps, batch_size=batch_size, lr=lr, workers=workers, precision=precision,
                          save_every=save_every, save_minutes=save_minutes, seed=seed, init=init, canaries=canaries,
                          canary_repeats=canary_repeats)
        result = run_pretrain(cfg, out, resume=resume)
    except FedclipError as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(out)
    if result["undecodable_skipped"]:
        bad = result["undecodable_skipped"]
        console.print(f"[yellow]warning:[/] skipped {len(bad)} undecodable image(s) (first: {escape(bad[0])}); "
                      "`fedclip data check DIR` lists them all")
    if result["checkpoint"]:
        console.print(f"final loss {result['final_loss']:.4f}, {result['samples_per_s']:.1f} samples/s; "
                      f"checkpoint: {result['checkpoint']}")


def _result_table(title: str, results: list[dict]) -> Table:
    table = Table(title=title)
    for col in ("task", "mode", "n", "balanced acc. [95% CI]", "macro F1", "AUC", "kappa"):
        table.add_column(col)
    for r in results:
        if r["task"] == "retrieval":
            continue
        ci = r.get("ci", {}).get("balanced_accuracy")
        bacc = f"{r['balanced_accuracy']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        table.add_row(r["task"], r.get("mode", ""), str(r["n"]), bacc, f"{r['macro_f1']:.3f}",
                      f"{r['auc']:.3f}" if "auc" in r else "-", f"{r['kappa']:.3f}" if "kappa" in r else "-")
    return table


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory.")],
    data: Annotated[Path, typer.Option(help="Dataset dir to evaluate on.")],
    task: Annotated[list[str] | None, typer.Option(
        help="Task(s): referable_dr, dr_grade, dr, a condition, fives, refuge, odir, retrieval. Repeatable.")] = None,
    mode: Annotated[str, typer.Option(help="zero-shot | linear-probe.")] = "zero-shot",
    k_shot: Annotated[int | None, typer.Option(help="Linear probe: k training images per class.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the probe split and the bootstrap.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Zero-shot or linear-probe evaluation with balanced accuracy, F1, AUC, kappa and 95% CIs."""
    from fedclip import evaluate, models

    try:
        vc = models.load_checkpoint(checkpoint)
        results = evaluate.evaluate_dir(vc, data, task or ["referable_dr"], mode=mode, k_shot=k_shot, seed=seed)
    except FedclipError as e:
        _fail(e)
    console.print(_result_table(f"{checkpoint} on {data}", results))
    for r in results:
        if r["task"] == "retrieval":
            console.print("retrieval recall@k (image->text, text->image): " + ", ".join(
                f"{k} {v:.3f}" for k, v in r.items() if "_R@" in k))
    if json_out:
        try:
            io.write_json(json_out, results)
        except FedclipError as e:
            _fail(e)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Fundus photographs (any size, PNG or JPEG).")],
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory.")],
    top: Annotated[int, typer.Option(help="Conditions to show per image.")] = 3,
) -> None:
    """Top conditions with probabilities for each image (zero-shot)."""
    from fedclip import evaluate, models

    try:
        vc = models.load_checkpoint(checkpoint)
        results = evaluate.predict(vc, images)
    except FedclipError as e:
        _fail(e)
    for r in results:
        conds = ", ".join(f"{n} {p:.2f}" for n, p in r["conditions"][:top])
        grade = max(range(5), key=lambda g: r["dr_grade"][g])
        console.print(f"{r['image']}: {conds}; DR grade {grade} ({r['dr_grade'][grade]:.2f})")


@app.command()
def federate(
    checkpoint: Annotated[Path | None, typer.Option(help="Pretrained checkpoint to start from.")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset dir split into the hospitals (simulation).")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Held-out dataset dir for server-side evaluation.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run dir (metrics.jsonl, ledger.json, checkpoints/).")] = None,
    clients: Annotated[int | None, typer.Option(help="Number of hospitals (SuperNodes). \\[default: 3]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds. \\[default: 5]")] = None,
    epsilon: Annotated[float | None, typer.Option(
        help="Per-client privacy budget over all rounds. \\[default: 8.0]")] = None,
    delta: Annotated[float | None, typer.Option(help="Per-client delta. \\[default: 1e-05]")] = None,
    strategy: Annotated[str | None, typer.Option(
        help="fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum.")] = None,
    partitioning: Annotated[str | None, typer.Option(help="hospital | iid | dirichlet.")] = None,
    task: Annotated[str | None, typer.Option(help="Fine-tuning task (see `fedclip eval --help`).")] = None,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train without DP-SGD (baseline only).")] = False,
    config: Annotated[Path | None, typer.Option(help="TOML file with a \\[federate] table.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override: federate.NAME=VALUE or federate.finetune.NAME=VALUE (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the federation in --out after its last round, with its config.toml.")] = False,
    state_dir: Annotated[Path | None, typer.Option(
        help="Where the simulated hospitals keep their lifetime ledgers (default $FEDCLIP_HOME/nodes, "
             "~/.fedclip/nodes); outlives --out.")] = None,
    policy: Annotated[Path | None, typer.Option(
        help="TOML with the hospitals' own privacy policies: \\[policy] for all, \\[policy.client-N] for one.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own per-message log.")] = False,
) -> None:
    """Federated DP fine-tuning on Flower's simulation engine (one process per hospital)."""
    from fedclip import config as cfglib
    from fedclip.federated import policy as policylib
    from fedclip.federated.config import FederateConfig
    from fedclip.federated.simulation import simulate

    try:
        if resume and config is None and out is not None and (out / "config.toml").exists():
            config = out / "config.toml"  # continue with the run's own settings (flags still override)
        cfg = cfglib.load(FederateConfig, "federate", config, set_ or (), checkpoint=checkpoint, data=data,
                          eval_data=eval_data, out=out, clients=clients, rounds=rounds, strategy=strategy,
                          partitioning=partitioning, resume=resume or None,
                          **{"finetune.epsilon": epsilon, "finetune.delta": delta, "finetune.task": task,
                             "finetune.dp": False if no_dp else None})
        policies = policylib.load_simulated(policy, cfg.clients)
        summary = simulate(cfg, verbose=verbose, state_root=state_dir, policies=policies)
    except FedclipError as e:
        _fail(e)
    table = Table(title=f"{cfg.strategy}, {cfg.clients} hospitals, task {cfg.finetune.task}")
    for col in ("round", "server balanced acc.", "nodes (status, ε)"):
        table.add_column(col)
    reasons = {}
    for r in summary.rounds:
        clients = sorted(r.clients, key=lambda c: c.get("partition", -1))
        text = ", ".join(f"{int(c.get('partition', -1))}: {c['status']}"
                         + (f" ε={c['epsilon']:.2f}" if "epsilon" in c else "") for c in clients)
        reasons.update({int(c.get("partition", -1)): c["reason"] for c in clients if c.get("reason")})
        if r.central:
            text += f"; central ε={r.central['epsilon']:.2f} per hospital"
        bacc = r.server.get("balanced_accuracy")
        table.add_row(str(r.round), f"{bacc:.3f}" if bacc is not None else "-", text or "(start)")
    console.print(table)
    for pid, reason in sorted(reasons.items()):
        console.print(f"node {pid}: {reason}")
    ledgers = Table(title="each hospital's lifetime ledger on this data (kept on the node)")
    for col in ("node", "ε (lifetime, per unit)", "δ", "relation, unit, accountant", "noise",
                "per patient (group privacy)"):
        ledgers.add_column(col)
    for name, entries in summary.nodes.items():
        if entries:
            ledgers.add_row(name, *_ledger_cells(entries[-1]))
    if ledgers.rows:
        console.print(ledgers)
        console.print("per patient: k = most images of one patient at that node; kε and k·e^((k−1)ε)·δ "
                      "(δ = 1: no patient-level guarantee)")
    console.print(f"ledger: {Path(cfg.out) / 'ledger.json'}; checkpoints: {Path(cfg.out) / 'checkpoints'}")


def _ledger_cells(e: dict) -> list[str]:
    """A node's lifetime spend with its unit and relation, and what it means per patient."""
    patient = "-"
    if e.get("patient_epsilon") is not None:
        patient = f"k={e['group_size']}: ε={e['patient_epsilon']:.1f}, δ={e['patient_delta']:.2g}"
    return [f"{e['epsilon']:.3f}", f"{e['delta']:g}", f"{e['neighbouring']} {e['unit']}, {e['accountant']}",
            e["noise_source"], patient]


audit_app = typer.Typer(no_args_is_help=True, suggest_commands=False,
                            help="Privacy audits: membership inference, empirical epsilon, "
                        "canary exposure, deja-vu memorization, data copying.")
app.add_typer(audit_app, name="audit")


@audit_app.command("mia")
def audit_mia(
    target: Annotated[Path, typer.Option(help="Checkpoint to audit (pretrained or a federation's round).")],
    members: Annotated[Path, typer.Option(help="Dataset dir of records that trained the target.")],
    nonmembers: Annotated[Path, typer.Option(help="Dataset dir of records from the same population that did not.")],
    population: Annotated[Path | None, typer.Option(help="Dataset dir of further non-members (RMIA's z).")] = None,
    attack: Annotated[list[str] | None, typer.Option(
        help="loss | lira | lira-offline | rmia | rmia-offline (repeatable; default loss, lira, rmia).")] = None,
    refs: Annotated[int, typer.Option(help="Reference models (even; fine-tuned targets).")] = 8,
    level: Annotated[str, typer.Option(help="patient | image | auto (patient where patient ids exist).")] = "auto",
    seed: Annotated[int, typer.Option(help="The auditor's seed: reference splits, bootstrap.")] = 0,
    workers: Annotated[int, typer.Option(help="Reference models trained in parallel on Ray by this many worker "
                                              "processes; 1 trains them in this process.")] = 1,
    out: Annotated[Path, typer.Option(help="Audit dir (results.json, scores.csv, refs/).")] = Path("runs/audit-mia"),
) -> None:
    """Membership inference against a checkpoint: AUC and TPR at low FPR with CIs, per patient and image."""
    from fedclip.audits.mia import MiaConfig, run_mia
    from fedclip.progress import progress_bar

    cfg = MiaConfig(attacks=tuple(attack or ("loss", "lira", "rmia")), refs=refs, level=level, seed=seed,
                    workers=workers)
    try:
        with progress_bar("reference models", refs if any(a != "loss" for a in cfg.attacks) else 0) as advance:
            doc = run_mia(target, members, nonmembers, population, cfg, out, advance=advance)
    except FedclipError as e:
        _fail(e)
    from fedclip.audits.metrics import FPRS, describe_tpr

    table = Table(title=f"membership inference, {doc['level']} level")
    for col in ("attack", "AUC [95% CI]", *(f"TPR@{f:.1%} FPR" for f in FPRS)):
        table.add_column(col)
    for name, e in doc["attacks"].items():
        m = e[doc["level"]]
        table.add_row(name, f"{m['auc']:.3f} [{m['ci']['auc'][0]:.3f}, {m['ci']['auc'][1]:.3f}]",
                      *(describe_tpr(m, f) for f in FPRS))
    console.print(table)
    console.print(escape(doc["verdict"]["text"]))
    for w in doc["warnings"]:
        console.print(f"[yellow]caution:[/] {escape(w)}")
    console.print(f"confound check AUC {doc['confound']['auc']:.3f}; results: {out / 'results.json'}")


@audit_app.command("epsilon")
def audit_epsilon(
    run: Annotated[Path | None, typer.Option(
        help="A federation's run dir: its base checkpoint, data, settings.")] = None,
    node_dir: Annotated[Path | None, typer.Option(
        help="With --run: a node's state dir (STATE_DIR/client-K in a simulation). The audit then replays the "
             "mechanism that node deployed, from its own ledger: its rounds' noise, sampling, steps and unit.")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Base checkpoint (instead of --run).")] = None,
    data: Annotated[Path | None, typer.Option(
        help="A node's dataset dir (instead of, or overriding, --run's).")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Claimed epsilon, > 0 (required with --checkpoint).")] = None,
    delta: Annotated[float | None, typer.Option(help="Delta (with --checkpoint; default 1e-5).")] = None,
    method: Annotated[str, typer.Option(help="one-run | trials.")] = "one-run",
    threat: Annotated[str, typer.Option(help="white-box (the server's view) | black-box.")] = "white-box",
    canaries: Annotated[int | None, typer.Option(
        help="one-run: canaries, each included with probability 1/2 (default: white-box as many as 512 MiB of "
             "directions holds, 500-10,000; black-box 100).")] = None,
    trials: Annotated[int, typer.Option(help="trials: trainings, half of them with the canary.")] = 100,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    seed: Annotated[int, typer.Option(help="The auditor's seed (canaries), never the training's noise.")] = 0,
    power: Annotated[bool, typer.Option(
        "--power", help="Also audit copies of the training with the noise halved and the clip off (the claim "
                        "unchanged) and report which of these breaks the audit catches (one-run only).")] = False,
    config_file: Annotated[Path | None, typer.Option(
        help="With --checkpoint: TOML file with a \\[finetune] table, the audited training's settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="With --checkpoint: finetune.NAME=VALUE, a setting of the audited training (repeatable; "
                      "default: fedclip.finetune.FinetuneConfig's).")] = None,
    out: Annotated[Path, typer.Option(help="Audit dir (results.json, scores.csv).")] = Path("runs/audit-epsilon"),
) -> None:
    """Empirical epsilon lower bound of the federation's DP fine-tuning, against its accountant's epsilon."""
    from fedclip import config as cfglib
    from fedclip.audits.epsilon import EpsilonConfig, prepare, prepare_deployed, run_epsilon, settings_from_run
    from fedclip.finetune import FinetuneConfig
    from fedclip.progress import progress_bar

    try:
        if run is not None and (config_file or set_):
            raise FedclipError("--config-file / --set describe a --checkpoint's training; a --run brings its own")
        training = None
        if node_dir is not None and run is None:
            raise FedclipError("--node-dir replays a node of a federation: pass its --run too")
        if run is not None and node_dir is not None:
            training = prepare_deployed(run, node_dir, data)
            base, run_data, ledger_eps = None, data, training.ledger_epsilon
            source = {"run": str(run), "node": str(node_dir)}
        elif run is not None:
            base, run_data, ft, ledger_eps = settings_from_run(run)
            source = {"run": str(run)}
        elif checkpoint is not None:
            base, run_data, ledger_eps = checkpoint, data, None
            if epsilon is None or not epsilon > 0:
                raise FedclipError(f"--epsilon {epsilon}: with --checkpoint, pass the claimed epsilon (> 0) to audit")
            delta = 1e-5 if delta is None else delta
            if not 0 < delta < 1:
                raise FedclipError(f"--delta {delta}: pass a delta between 0 and 1 (exclusive), e.g. 1e-5")
            # the claim's mechanism as the user states it (file, --set), not settings chosen here
            ft = cfglib.load(FinetuneConfig, "finetune", config_file, set_ or (), epsilon=epsilon, delta=delta)
            source = {"checkpoint": str(checkpoint)}
        else:
            raise FedclipError("pass --run RUN (a federation's run dir) or --checkpoint CKPT --data DIR")
        data = data or run_data
        if training is None and data is None:
            raise FedclipError("pass --data DIR: the node data the audited training runs on")
        cfg = EpsilonConfig(method=method, threat=threat, canaries=canaries, trials=trials, confidence=confidence,
                            seed=seed)
        if training is None:
            training = prepare(base, data, ft)
        source["data"] = str(data) if data else f"the run's data, {node_dir.name if node_dir else ''} partition"
        with progress_bar(f"{threat} {method} audit", 1 if method == "one-run" else trials) as advance:
            doc = run_epsilon(training, cfg, out, source=source, ledger_epsilon=ledger_eps, check_power=power,
                              advance=advance)
    except FedclipError as e:
        _fail(e)
    th = doc["theoretical"]
    console.print(f"ε lower bound {doc['epsilon_lb']:.3f} at {confidence:.0%} confidence ({threat}, {method}); "
                  f"theoretical ε {th['epsilon']:.3f} at δ = {th['delta']:g} per {th['unit']} ({th['neighbouring']},"
                  f" {th['accountant']})" + (f"; ledger ε {ledger_eps:.3f}" if ledger_eps else ""))
    if doc["epsilon_lb"] > th["epsilon"]:
        console.print("[bold red]the lower bound exceeds the claimed epsilon: the mechanism leaks more than stated[/]")
    for how, p in (doc.get("power") or {}).items():
        console.print(f"power: {how} → ε lower bound {p['epsilon_lb']:.3f}: {'caught' if p['caught'] else 'missed'}")
    console.print(f"results: {out / 'results.json'}")


@audit_app.command("exposure")
def audit_exposure(
    target: Annotated[Path, typer.Option(help="Checkpoint pretrained with --canaries.")],
    run: Annotated[Path, typer.Option(help="Its pretraining run dir (canaries.csv, canaries/).")],
    reference: Annotated[Path | None, typer.Option(
        help="A checkpoint that never saw the canaries (same architecture), scored on the same canaries.")] = None,
    candidates: Annotated[int, typer.Option(help="Secrets ranked per canary (the true one included).")] = 1000,
    seed: Annotated[int, typer.Option(help="The auditor's seed: candidate secrets, bootstrap.")] = 0,
    out: Annotated[Path, typer.Option(help="Audit dir (results.json, exposure.csv).")] = Path("runs/audit-exposure"),
) -> None:
    """Canary exposure (Secret Sharer): how well the model ranks each planted canary's secret, by repeat count."""
    from fedclip.audits.exposure import ExposureConfig, run_exposure

    try:
        doc = run_exposure(target, run, reference, ExposureConfig(candidates=candidates, seed=seed), out)
    except FedclipError as e:
        _fail(e)
    table = Table(title=f"canary exposure, bits (max {doc['max_exposure']:.1f}; ~1.4 when nothing is memorised)")
    names = ["target"] + (["reference"] if reference else [])
    for col in ("repeats", "canaries", *[f"{n} [95% CI]" for n in names], "target - controls [95% CI]"):
        table.add_column(col)
    for r, g in doc["by_repeats"].items():
        gap = g.get("gap_to_controls")
        table.add_row("controls (never trained)" if r == "0" else r, str(g["target"]["n"]),
                      *[f"{g[n]['mean']:.2f} [{g[n]['ci'][0]:.2f}, {g[n]['ci'][1]:.2f}]" for n in names],
                      f"{gap['gap']:.2f} [{gap['ci'][0]:.2f}, {gap['ci'][1]:.2f}]" if gap else "-")
    console.print(table)
    for w in doc["warnings"]:
        console.print(f"[yellow]caution:[/] {escape(w)}")
    console.print(("[bold red]the model memorised canaries repeated " + ", ".join(doc["memorised_at_repeats"])
                   + " times[/]") if doc["memorised_at_repeats"] else "no canary exposed beyond the controls")
    console.print(f"results: {out / 'results.json'}")


@audit_app.command("dejavu")
def audit_dejavu(
    target: Annotated[Path, typer.Option(help="CLIP checkpoint trained on --members.")],
    reference: Annotated[Path, typer.Option(help="Same-architecture checkpoint that never saw --members.")],
    members: Annotated[Path, typer.Option(help="Dataset dir of image-caption pairs that trained the target.")],
    public: Annotated[Path, typer.Option(help="Dataset dir of labelled images neither model trained on.")],
    unseen: Annotated[Path | None, typer.Option(
        help="The control: image-caption pairs of the same population that neither model trained on. Only the "
             "members' gap beyond theirs counts as memorisation.")] = None,
    attribute: Annotated[str, typer.Option(help="What the captions are stripped of: dr or a condition.")] = "dr",
    k: Annotated[int, typer.Option(help="Public neighbours retrieved per stripped caption.")] = 10,
    seed: Annotated[int, typer.Option(help="The auditor's seed: bootstrap.")] = 0,
    out: Annotated[Path, typer.Option(help="Audit dir (results.json, dejavu.csv).")] = Path("runs/audit-dejavu"),
) -> None:
    """Deja-vu memorization: does a stripped training caption still retrieve images with the hidden attribute?"""
    from fedclip.audits.dejavu import DejavuConfig, run_dejavu

    try:
        doc = run_dejavu(target, reference, members, public, DejavuConfig(attribute=attribute, k=k, seed=seed), out,
                         unseen=unseen)
    except FedclipError as e:
        _fail(e)
    g, ba = doc["gap"], doc["balanced_accuracy"]
    console.print(f"{doc['label']} predicted from {k} public neighbours of the stripped caption: balanced accuracy "
                  f"target {ba['target']:.3f}, reference {ba['reference']:.3f}; gap {g['gap']:+.3f} "
                  f"[{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]; confidently right only on the target: "
                  f"{doc['confident_and_right_only_on_target']} of {doc['data']['n_members']}")
    if doc.get("control"):
        c = doc["control"]
        console.print(f"on {c['n_unseen']} unseen records the gap is {c['gap']['gap']:+.3f}; members beyond them: "
                      f"{c['members_minus_unseen']['excess']:+.3f} [{c['members_minus_unseen']['ci'][0]:+.3f}, "
                      f"{c['members_minus_unseen']['ci'][1]:+.3f}]")
    elif doc.get("caution"):
        console.print(f"[yellow]caution:[/] {escape(doc['caution'])}")
    console.print("[bold red]deja-vu memorization: the target recalls what its captions no longer say[/]"
                  if doc["memorised"] else "no deja-vu memorization beyond the reference")
    console.print(f"results: {out / 'results.json'}")


@audit_app.command("copying")
def audit_copying(
    synthetic: Annotated[Path, typer.Option(help="Dataset dir of the synthetic images to audit.")],
    train: Annotated[Path, typer.Option(help="Dataset dir the generator was fitted on (its training patients).")],
    holdout: Annotated[Path, typer.Option(help="Dataset dir of other patients from the same population.")],
    embed: Annotated[str, typer.Option(
        help="pixels (model-free, aligned over small shifts/rotations) or a checkpoint dir.")] = "pixels",
    alpha: Annotated[float, typer.Option(help="Flag rate a fresh patient would have at most.")] = 0.005,
    seed: Annotated[int, typer.Option(help="The auditor's seed: k-means cells, equal-size subsample.")] = 0,
    out: Annotated[Path, typer.Option(help="Audit dir (results.json, copies.csv).")] = Path("runs/audit-copying"),
) -> None:
    """Does a synthetic set copy its generator's training patients? DCR, Meehan's C_T, suspected copies."""
    from fedclip.audits.copying import CopyingConfig, run_copying

    try:
        doc = run_copying(synthetic, train, holdout, CopyingConfig(embed=embed, alpha=alpha, seed=seed), out)
    except FedclipError as e:
        _fail(e)
    share, ct, flags = doc["dcr"]["share_closer_to_train"], doc["three_sample_test"]["c_t"], doc["flags"]
    console.print(f"closer to train than to holdout: {share['share']:.1%} of {share['n']} (p = {share['p_value']:.2g} "
                  f"against 1/2); C_T = " + (f"{ct:.2f}" if ct is not None else "n/a")
                  + f"; flagged as near-copies: {flags['flagged']} ({flags['rate']:.1%})")
    verdict = doc["verdict"]
    console.print("[bold red]the synthetic set copies training records:[/] " + escape("; ".join(verdict["reasons"]))
                  if verdict["copies"] else "no evidence of copying")
    if verdict["caution"]:
        console.print(f"[yellow]caution:[/] {escape(verdict['caution'])}")
    console.print(f"results: {out / 'results.json'}, suspected copies: {out / 'copies.csv'}")


@audit_app.command("generator")
def audit_generator(
    checkpoint: Annotated[Path, typer.Option(help="Generator checkpoint (RUN/checkpoints/last).")],
    members: Annotated[Path, typer.Option(help="Dataset dir the generator was trained on (or a subset of it).")],
    holdout: Annotated[Path, typer.Option(help="Dataset dir of fresh patients from the same population.")],
    population: Annotated[Path | None, typer.Option(
        help="Dataset dir of further patients neither audited nor trained on (the auditor's own): adds the "
             "density-ratio attack and reference generators that calibrate the white-box loss.")] = None,
    refs: Annotated[int, typer.Option(help="Reference generators trained like the target on population cohorts "
                                           "(with --population; 0: none).")] = 2,
    n_samples: Annotated[int, typer.Option(help="Images to generate for copying and the black-box attack.")] = 256,
    embed: Annotated[str, typer.Option(
        help="anatomy (vessels and disc, colour-free) | pixels | a CLIP checkpoint dir (its image tower).")
    ] = "anatomy",
    show_patients: Annotated[bool, typer.Option(help="Name patient ids in the per-patient copy counts.")] = False,
    seed: Annotated[int, typer.Option(help="The auditor's seed: sampling, noise draws, bootstrap.")] = 0,
    out: Annotated[Path, typer.Option(help="Audit dir (results.json, scores.csv, samples/, copying/).")] = Path(
        "runs/audit-generator"),
) -> None:
    """Does a learned generator copy its patients? Patient-level MIA (white/black-box), copies, fidelity."""
    from fedclip.audits.generator import GeneratorAuditConfig, run_generator_audit

    try:
        doc = run_generator_audit(checkpoint, members, holdout, out, GeneratorAuditConfig(
            n_samples=n_samples, embed=embed, show_patients=show_patients, seed=seed, refs=refs), population=population)
    except FedclipError as e:
        _fail(e)
    for name, entry in doc["attacks"].items():
        p = entry["patient"]
        lo, hi = p["ci"]["auc"]
        console.print(f"{name}: patient-level AUC {p['auc']:.2f} (95% CI {lo:.2f}-{hi:.2f}; {p['n_members']} trained "
                      f"vs {p['n_nonmembers']} fresh patients)")
    flags, cp = doc["copying"]["flags"], doc["copies_per_patient"]
    console.print(f"near-copies among {doc['data']['n_samples']} samples: {flags['flagged']} ({flags['rate']:.1%}); "
                  f"training patients copied: {cp['patients_with_copies']} of {cp['of_patients']}")
    privacy = doc["target"]["privacy"] or {}
    console.print("generator: " + (f"patient-level DP, ε = {privacy['epsilon']:.2f}" if privacy.get("dp")
                                   else "trained without DP"))
    verdict = doc["verdict"]
    console.print("[bold red]the generator reproduces its patients:[/] " + escape("; ".join(verdict["reasons"]))
                  if verdict["copies"] else "no evidence that the generator reproduces its patients")
    if verdict.get("caution"):
        console.print(f"[yellow]caution:[/] {escape(verdict['caution'])}")
    console.print(f"results: {out / 'results.json'}")


ShowRecords = Annotated[bool, typer.Option(
    "--show-records", help="Name the most exposed patients and show their images and all paths (a banner marks "
                           "every page). Default: redacted, no patient id, image, file name or path anywhere.")]
Criteria = Annotated[Path | None, typer.Option(
    help="Acceptance criteria (TOML, see docs/audits.md) for a sign-off page: met / not met / not resolvable.")]
SignKey = Annotated[Path | None, typer.Option(
    help="Ed25519 private key (PEM, from `fedclip keygen`) that signs evidence.json.")]


def _render(audits: list[Path], out: Path, show_records: bool, criteria: Path | None, sign_key: Path | None) -> None:
    from fedclip.audits.report import render

    try:
        paths = render(audits, out, redact=not show_records, criteria=criteria, sign_key=sign_key)
    except FedclipError as e:
        _fail(e)
    console.print(f"wrote {paths['html']}, {paths['pdf']}, {paths['json']}; evidence: {paths['evidence']}"
                  + (" [bold red](contains patient records)[/]" if show_records else ""))


@app.command()
def report(
    audits: Annotated[list[Path], typer.Argument(help="Audit dirs (each with results.json).")],
    out: Annotated[Path | None, typer.Option(
        help="Where report.html / .pdf / .json and evidence.json go (default: the first audit dir).")] = None,
    show_records: ShowRecords = False,
    criteria: Criteria = None,
    sign_key: SignKey = None,
) -> None:
    """The audit report a privacy officer signs: report.html, report.pdf, report.json, evidence.json."""
    _render(audits, out or audits[0], show_records, criteria, sign_key)


@app.command()
def compare(
    audits: Annotated[list[Path], typer.Argument(help="Audit dirs of the models to compare.")],
    out: Annotated[Path, typer.Option(help="Where report.html / .pdf / .json go.")] = Path("runs/compare"),
    show_records: ShowRecords = False,
    criteria: Criteria = None,
    sign_key: SignKey = None,
) -> None:
    """Models side by side: one table, one ROC plot, then each audit; HTML + PDF + JSON + evidence."""
    if len(audits) < 2:
        _fail(FedclipError("compare needs at least two audit dirs; use `fedclip report` for one"))
    _render(audits, out, show_records, criteria, sign_key)


@app.command()
def verify(
    evidence: Annotated[Path, typer.Argument(help="A report dir or its evidence.json.")],
    public_key: Annotated[Path | None, typer.Option(
        help="The officer's public key (PEM) to check the signature against.")] = None,
) -> None:
    """Check that a report and every input it lists are unchanged since it was written (and who signed it)."""
    from fedclip.audits.report.evidence import verify as check

    try:
        res = check(evidence, public_key)
    except FedclipError as e:
        _fail(e)
    signed = f"; signature valid ({res['checked_against']})" if res["signed"] else "; not signed"
    console.print(f"{res['files']} files unchanged{signed}")


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Private key file to create (the public key goes to OUT.pub).")],
) -> None:
    """An Ed25519 key pair for signing evidence bundles (`report --sign-key`)."""
    from fedclip.audits.report.evidence import keygen as make

    try:
        private, public = make(out)
    except FedclipError as e:
        _fail(e)
    console.print(f"private key {private} (keep it to yourself); public key {public} (give it to reviewers)")


experiment_app = typer.Typer(no_args_is_help=True, suggest_commands=False,
                            help="Studies: synthetic vs real, with and without DP, quality "
                             "and leakage in one report.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("list")
def experiment_list() -> None:
    """The shipped studies, one line each."""
    from fedclip.experiments.study import shipped

    for name, line in shipped().items():
        console.print(f"[bold]{name}[/]  {escape(line)}")


def _shipped_study_names() -> list[str]:
    """The shipped studies, read without importing the study code (help stays fast)."""
    from fedclip.experiments import STUDIES_DIR

    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


@experiment_app.command("run")
def experiment_run(
    study: Annotated[str, typer.Argument(
        autocompletion=lambda incomplete: [n for n in _shipped_study_names() if n.startswith(incomplete)],
        help=f"A shipped study ({' | '.join(_shipped_study_names())}; `fedclip experiment list` says what each "
             "does) or a study TOML file.")],
    out: Annotated[Path | None, typer.Option(help="Study dir (default runs/<name>).")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Rerun from this stage: data, synthesize, pretrain, "
                                              "evaluate, federate, audit, report.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: study.NAME=VALUE (repeatable).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Flower's and Ray's own log lines too.")] = False,
) -> None:
    """Run a study end to end; finished stages are skipped, an interrupted one resumes."""
    from fedclip.experiments.headline import CONSOLE_HEADER, table_rows
    from fedclip.experiments.study import Study, load

    def event(kind: str, stage, seconds: float) -> None:  # noqa: ANN001
        if kind == "skip":
            console.print(f"[dim]{stage.name}: done earlier, skipped[/]")
        elif kind == "start":
            console.print(f"[bold]{stage.name}[/]: {escape(stage.describe)}")
        else:
            console.print(f"[dim]{stage.name}: {seconds:.0f} s[/]")

    root = out or Path("runs") / Path(study).stem
    try:
        from fedclip.experiments import generator_study
        from fedclip.experiments.study import study_file

        if generator_study.is_generator_study(study_file(study)):
            outputs = generator_study.GeneratorStudy(generator_study.load(study_file(study), tuple(set_ or ())),
                                                     root).run(start_from=from_, on_event=event)
            made = outputs["report"]
            console.print(f"table: {made.table}; figure: {made.figure}; results: {made.results}")
            return
        cfg = load(study, tuple(set_ or ()))
        outputs = Study(cfg, root, verbose=verbose).run(start_from=from_, on_event=event)
    except FedclipError as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print(f"interrupted; run the same command to resume ({root})")
        raise typer.Exit(130) from None
    report = outputs["report"]
    doc = json.loads(Path(report.results).read_text())
    table = Table(title=f"{doc['task']}: quality at {doc['external_hospital']} (external) and at the hospitals; "
                  "leakage of the private cohort (patient level)")
    for col in CONSOLE_HEADER:
        table.add_column(col, no_wrap=col == "model")
    for row in table_rows(doc, compact=True):
        table.add_row(*row)
    console.print(table)
    r = doc["ratios"]
    console.print(f"synthetic ÷ real external balanced accuracy: "
                  f"{r['synthetic_over_private_external_balanced_accuracy']:.2f}")
    console.print(f"report: {report.pdf} (also .html, .json); results: {report.results}")


def _interrupted(out: Path) -> NoReturn:
    """Ctrl-C in a training command: say what was kept and how to continue, exit 130 (the shell's code)."""
    last = out / "checkpoints" / "last"
    kept = (f"the last checkpoint ({last}) is kept; continue with the same command and --resume"
            if last.is_dir() else "no checkpoint was saved yet (--save-every N saves one every N steps)")
    console.print(f"interrupted: {kept}")
    raise typer.Exit(130)


def main() -> None:  # pragma: no cover - `python -m fedclip` and `python -m fedclip.cli.main`
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
