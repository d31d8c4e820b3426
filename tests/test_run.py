"""The run dir's typed rows: what the server writes is what every reader gets back, and a row from another
version fails with a one-line error instead of reading as a missing value."""

import json

import pytest

from fedclip.errors import FedclipError
from fedclip.run import (
    LedgerRow,
    RoundLine,
    RunDir,
    RunState,
    largest_node_epsilon,
    read_ledger,
    read_rounds,
    write_ledger,
)


def test_ledger_rows_round_trip_and_the_server_release_is_not_a_node(tmp_path):
    run = RunDir(tmp_path)
    rows = [LedgerRow(round=1, node="3", status="aggregated", epsilon=2.5, delta=1e-5, unit="patient"),
            LedgerRow(round=1, node="4", status="refused", epsilon=7.9),
            LedgerRow(round=1, node="server", status="central-dp", epsilon=40.0, releases=1, unit="hospital")]
    write_ledger(run, rows)
    assert read_ledger(run) == rows
    assert "noise_multiplier" not in json.loads(run.ledger_summary.read_text())[0]  # absent stays absent
    assert largest_node_epsilon(read_ledger(run)) == 7.9  # the central release is not a node's spend
    assert largest_node_epsilon([]) is None and read_ledger(RunDir(tmp_path / "none")) == []


def test_a_drifted_ledger_key_fails_with_the_file_named(tmp_path):
    run = RunDir(tmp_path)
    run.ledger_summary.write_text(json.dumps([{"round": 1, "node": "0", "status": "aggregated", "eps": 1.0}]))
    with pytest.raises(FedclipError, match=r"ledger.json: a ledger row has unknown keys eps"):
        read_ledger(run)
    run.ledger_summary.write_text("[{")
    with pytest.raises(FedclipError, match="not valid JSON"):
        read_ledger(run)


def test_round_lines_and_state_round_trip(tmp_path):
    run = RunDir(tmp_path)
    lines = [RoundLine(round=0, time=1.0, server={"auc": 0.5}),
             RoundLine(round=1, time=2.0, server={}, clients=[{"partition": 0, "status": "aggregated"}],
                       central={"epsilon": 1.0})]
    run.metrics.write_text("".join(json.dumps(line.to_json()) + "\n" for line in lines))
    assert read_rounds(run) == lines
    assert "clients" not in lines[0].to_json()  # round 0 is the starting model: nobody replied
    assert RunState.read(run) is None
    RunState(round=2, settings={"clients": 3}).write(run)
    assert RunState.read(run) == RunState(round=2, settings={"clients": 3})
    assert "central_accountant" not in json.loads(run.state.read_text())
