"""Property-based tests (hypothesis) of the parsers every user file goes through: the dataset dir's
metadata.csv and the config system. Any input either parses to what was meant or is a FedclipError; never
another exception (which the CLI would show as a traceback), never a silently different value."""

from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedclip import config as cfglib
from fedclip.data.records import METADATA_FILE, Record, read_metadata, write_metadata
from fedclip.errors import FedclipError
from fedclip.federated.config import FederateConfig, from_run_config, to_run_config
from fedclip.pretrain import PretrainConfig
from fedclip.synth.taxonomy import CONDITION_NAMES, QUALITY_NAMES

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)

labels = st.fixed_dictionaries({}, optional={
    "dr_grade": st.integers(0, 4), **{c: st.integers(0, 1) for c in CONDITION_NAMES},
    **{q: st.integers(0, 1) for q in QUALITY_NAMES}, "readable": st.integers(0, 1)})


def _dataset_dir() -> Path:
    root = Path(tempfile.mkdtemp())
    (root / "images").mkdir()
    (root / "images" / "a.png").write_bytes(b"")  # read_metadata checks the file exists, not its content
    return root


@FAST
@given(st.lists(st.tuples(text, labels), min_size=1, max_size=5))
def test_metadata_round_trips_any_caption_and_any_valid_labels(rows):
    root = _dataset_dir()
    try:
        records = []
        for i, (caption, lab) in enumerate(rows):
            (root / "images" / f"{i}.png").write_bytes(b"")
            if "dr_grade" in lab:
                lab = {**lab, "dr": int(lab["dr_grade"] > 0)}
            records.append(Record(f"images/{i}.png", caption, lab, {"patient_id": f"P{i}"}))
        write_metadata(root, records)
        back = read_metadata(root)
        assert [(r.filepath, r.caption, r.labels) for r in back] == [(r.filepath, r.caption, r.labels)
                                                                       for r in records]
    finally:
        shutil.rmtree(root)


@FAST
@given(st.lists(st.lists(text, min_size=0, max_size=5), min_size=0, max_size=4),
       st.lists(st.sampled_from(["filepath", "caption", "dr_grade", "amd", "patient_id", "junk", ""]),
                min_size=0, max_size=5))
def test_any_csv_is_read_or_refused_with_a_fedclip_error(rows, header):
    root = _dataset_dir()
    try:
        with open(root / METADATA_FILE, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows([[("images/a.png" if c == "filepath" and i == 0 else v) for i, (c, v) in
                          enumerate(zip(header, row, strict=False))] for row in rows])
        try:
            read_metadata(root)
        except FedclipError:
            pass
    finally:
        shutil.rmtree(root)


@FAST
@given(st.sampled_from(["steps", "lr", "batch_size", "model", "augment", "canary_repeats", "synth", "stpes", ""]),
       text)
def test_any_override_parses_or_is_a_fedclip_error(key, value):
    try:
        cfg = cfglib.load(PretrainConfig, "pretrain", None, [f"pretrain.{key}={value}"])
    except FedclipError:
        return
    assert isinstance(cfg, PretrainConfig)


@FAST
@given(rounds=st.integers(1, 1000), clients=st.integers(1, 64), mu=st.floats(0, 10, allow_nan=False),
       lr=st.floats(1e-6, 10, allow_nan=False), epochs=st.integers(1, 50), dp=st.booleans(),
       prior=st.none() | st.lists(st.floats(0.01, 1.0, allow_nan=False), min_size=2, max_size=5).map(tuple),
       strategy=st.sampled_from(["fedavg", "fedprox", "krum"]), out=st.from_regex(r"[a-z][a-z0-9_/-]{0,20}",
                                                                                 fullmatch=True))
def test_any_federation_config_survives_toml_and_the_flower_run_config(rounds, clients, mu, lr, epochs, dp, prior,
                                                                       strategy, out):
    cfg = replace(FederateConfig(), rounds=rounds, clients=clients, proximal_mu=mu, strategy=strategy,
                  out=Path(out)).with_finetune(lr=lr, epochs=epochs, dp=dp, class_prior=prior)
    with tempfile.TemporaryDirectory() as tmp:
        again = cfglib.load(FederateConfig, "federate", cfglib.write(Path(tmp) / "c.toml", {"federate": cfg}))
    assert again == cfg
    assert from_run_config(to_run_config(cfg)) == cfg
