"""The stage runner on stages whose work is writing files: skip, change, interrupt, --from."""

import json

import pytest

from fedclip.errors import FedclipError
from fedclip.experiments.runner import STAGES_DIR, Stage, run_stages


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
            text = f"{name}:{settings[name]}:" + ",".join(str(up[r]["out"]) for r in reads)
            (root / name / "out.txt").write_text(text)
            return {"out": len(text), "resumed": part.read_text() == "++"}
        return Stage(name, run, {"value": settings[name]}, reads, (root / name,))

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
    assert out["b"]["resumed"]  # b found its own partial work (the same key): resumed, not wiped
    calls.clear()
    out = run_stages(tmp_path, chain(tmp_path, settings, calls), start_from="b")
    assert calls == ["b", "c"] and not out["b"]["resumed"]  # --from wipes and reruns b and what follows


def test_an_unknown_from_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FedclipError, match="--from d: no such stage; the stages are a, b, c"):
        run_stages(tmp_path, chain(tmp_path, {"a": 1, "b": 1, "c": 1}, []), start_from="d")
