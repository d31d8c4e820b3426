"""The stage runner on stages whose work is writing files: skip, change, interrupt, --from."""

import json
from dataclasses import dataclass

import pytest

from fedclip.errors import FedclipError
from fedclip.experiments.runner import STAGES_DIR, Stage, run_stages


@dataclass(frozen=True)
class Written:
    out: int  # the length of what the stage wrote
    resumed: bool  # whether it found its own partial work


def chain(root, settings, calls, interrupt_at=None):
    """a -> b -> c; each appends to `calls`, writes a file in its own dir and returns its content's length."""

    def make(name, reads):
        def run(up):
            calls.append(name)
            (root / name).mkdir(exist_ok=True)
            part = root / name / "partial"
            part.write_text(part.read_text() + "+" if part.exists() else "+")
            if name == interrupt_at:
                raise KeyboardInterrupt
            text = f"{name}:{settings[name]}:" + ",".join(str(up[r].out) for r in reads)
            (root / name / "out.txt").write_text(text)
            return Written(len(text), part.read_text() == "++")
        return Stage(name, run, Written, {"value": settings[name]}, reads, (root / name,))

    return [make("a", ()), make("b", ("a",)), make("c", ("b",))]


def test_a_finished_study_is_skipped_and_a_changed_setting_reruns_only_what_it_touches(tmp_path):
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    first = run_stages(tmp_path, chain(tmp_path, settings, calls))
    assert calls == ["a", "b", "c"]
    calls.clear()
    assert run_stages(tmp_path, chain(tmp_path, settings, calls)) == first
    assert calls == []
    settings["b"] = 2
    run_stages(tmp_path, chain(tmp_path, settings, calls))
    assert calls == ["b"]  # b's output length did not change, so c's inputs are the same: c is kept
    settings["b"] = 22  # a longer output: what c reads changed
    calls.clear()
    run_stages(tmp_path, chain(tmp_path, settings, calls))
    assert calls == ["b", "c"]
    # a changed stage starts from a clean dir: no partial file from the earlier run survives
    assert (tmp_path / "b" / "partial").read_text() == "+"


def test_an_interrupted_stage_resumes_with_its_partial_work_and_from_reruns_the_rest(tmp_path):
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    with pytest.raises(KeyboardInterrupt):
        run_stages(tmp_path, chain(tmp_path, settings, calls, interrupt_at="b"))
    assert json.loads((tmp_path / STAGES_DIR / "b.json").read_text())["done"] is False
    calls.clear()
    out = run_stages(tmp_path, chain(tmp_path, settings, calls))
    assert calls == ["b", "c"]  # a is not redone
    assert out["b"].resumed  # b found its own partial work (the same key): resumed, not wiped
    calls.clear()
    out = run_stages(tmp_path, chain(tmp_path, settings, calls), start_from="b")
    assert calls == ["b", "c"] and not out["b"].resumed  # --from wipes and reruns b and what follows


def test_an_unknown_from_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FedclipError, match="--from d: no such stage; the stages are a, b, c"):
        run_stages(tmp_path, chain(tmp_path, {"a": 1, "b": 1, "c": 1}, []), start_from="d")


@dataclass(frozen=True)
class Model:
    checkpoint: str
    sha256: str | None = None


@dataclass(frozen=True)
class Models:
    by_name: dict[str, Model]
    best: Model | None


def test_typed_outputs_come_back_as_their_types_and_an_older_record_format_reruns_in_place(tmp_path):
    calls = []

    def train(up):
        calls.append("train")
        (tmp_path / "train").mkdir(exist_ok=True)
        return Models({"a": Model("ckpt-a", "f00"), "b": Model("ckpt-b")}, best=None)

    def report(up):
        calls.append("report")
        return [up["train"].by_name["a"].checkpoint]

    stages = [Stage("train", train, Models, {}, dirs=(tmp_path / "train",)), Stage("report", report, list[str], {},
                                                                                     reads=("train",))]
    first = run_stages(tmp_path, stages)
    assert first["train"] == Models({"a": Model("ckpt-a", "f00"), "b": Model("ckpt-b")}, None)
    assert first["report"] == ["ckpt-a"]
    calls.clear()
    assert run_stages(tmp_path, stages) == first and calls == []  # rebuilt from the records, equal
    # a record written by an older version, whose fields no longer fit: run again, without wiping its dir
    record = tmp_path / STAGES_DIR / "train.json"
    old = json.loads(record.read_text())
    old["outputs"] = {"checkpoints": ["ckpt-a"]}
    record.write_text(json.dumps(old))
    (tmp_path / "train" / "finished-step.txt").write_text("a step's own output, which it skips on resume")
    assert run_stages(tmp_path, stages) == first and calls == ["train"]  # same outputs: report is kept
    assert (tmp_path / "train" / "finished-step.txt").exists()


def test_a_stage_returning_something_else_than_its_type_fails_at_once(tmp_path):
    stage = Stage("train", lambda up: {"checkpoint": "x", "weights": 1}, Model, {})
    with pytest.raises(TypeError):
        run_stages(tmp_path, [stage])
