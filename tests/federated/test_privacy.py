"""The privacy contract, tried as a curious or malicious server would: real Flower engine, real Opacus.

Each test pins one finding of the review that made the guarantee void (see docs/privacy.md).
"""

import json
import math
from dataclasses import replace

import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedclip import models
from fedclip.errors import FedclipError
from fedclip.federated import keys
from fedclip.federated.client_app import SimulatedNodes, make_client_app
from fedclip.federated.node import Node
from fedclip.federated.policy import NodePolicy, Refusal, load_simulated, negotiate
from fedclip.federated.server_app import resume_point
from fedclip.federated.simulation import simulate
from fedclip.federated.task import client_evaluate, client_train, load_global
from fedclip.head import trained_keys

ALLOWED = keys.PUBLIC_METRICS | keys.PUBLIC_STRINGS | {"node", "status"}


def _node(tmp_path, name="client-0", **policy):
    return Node(name, NodePolicy(**policy), tmp_path / name, deployed=False)


def _arrays(cfg):
    vc = load_global(cfg, None)
    return {k: v.clone() for k, v in vc.model.state_dict().items() if k in trained_keys(vc, cfg.finetune.train_blocks)}


def _ledger(node):
    (path,) = node.state_dir.glob("ledger-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_identical_federations_send_different_updates(federation, tmp_path):
    base, cfg, _ = federation
    again = replace(cfg, out=tmp_path / "again")
    simulate(again, state_root=tmp_path / "nodes")  # same config, same data, fresh hospitals
    first = models.load_checkpoint(cfg.out / "checkpoints" / "round-001").model.state_dict()
    second = models.load_checkpoint(again.out / "checkpoints" / "round-001").model.state_dict()
    changed = [k for k in trained_keys(models.load_checkpoint(cfg.checkpoint), 0)]
    assert all(not torch.equal(first[k], second[k]) for k in changed)


def test_noise_is_unpredictable_unless_a_test_seed_is_set_and_then_the_ledger_says_so(federation, tmp_path):
    base, cfg, _ = federation
    nc = {"partition-id": 0, "num-partitions": 3}
    runs = [client_train(cfg, _node(tmp_path / f"csprng{i}"), nc, _arrays(cfg), 1) for i in range(2)]
    assert not torch.equal(runs[0].update["visual.proj"], runs[1].update["visual.proj"])
    seeded = [client_train(cfg, _node(tmp_path / f"seeded{i}", insecure_test_seed=7), nc, _arrays(cfg), 1)
              for i in range(2)]
    assert torch.equal(seeded[0].update["visual.proj"], seeded[1].update["visual.proj"])
    assert {e["noise_source"] for e in _ledger(_node(tmp_path / "seeded0"))} == {"insecure-test-seed"}
    assert {e["noise_source"] for e in _ledger(_node(tmp_path / "csprng0"))} == {"os-csprng"}
    deployed = Node("node-0", NodePolicy(insecure_test_seed=7), tmp_path / "deployed", deployed=True)
    with pytest.raises(Refusal, match="for tests only"):
        deployed.noise_seed(1, 0)


def test_the_server_files_hold_only_public_or_charged_values(federation):
    base, cfg, result = federation
    rows = [c for r in result.rounds for c in r.clients]
    assert rows and all(set(c) <= ALLOWED for c in rows)
    assert not any("loss" in k or "accuracy" in k for c in rows for k in c)  # train metrics stay on the node
    for entry in result.ledger:
        assert {"epsilon", "unit", "neighbouring", "accountant", "delta"} <= set(entry.to_json())
    for i in range(3):
        node = _node(base / "nodes", f"client-{i}")
        ledger = _ledger(node)
        size = [e for e in ledger if e["kind"] == "dataset-size"]
        assert len(size) == 1  # released once, noised, charged; reused for the node's lifetime
        sent = {c[keys.NUM_EXAMPLES] for c in rows if int(c[keys.PARTITION]) == i}
        assert sent == {float(size[0]["public_size"])}  # the weight the server sees is the released size
        local = [json.loads(line) for line in (node.state_dir / "node.log").read_text().splitlines()]
        assert all("train_loss" in line for line in local)  # ... which are here, on the node's own disk


def test_client_evaluation_is_off_by_default_refused_without_policy_and_charged_with_it(federation, tmp_path):
    base, cfg, _ = federation
    assert cfg.client_eval is False
    for i in range(3):  # no node was asked to evaluate in the default federation
        local = (base / "nodes" / f"client-{i}" / "node.log").read_text()
        assert "evaluate" not in local
    nc = {"partition-id": 1, "num-partitions": 3}
    refused = client_evaluate(cfg, _node(tmp_path), nc, _arrays(cfg), 1)
    assert refused.metrics[keys.REFUSED] and "does not answer evaluation" in refused.strings[keys.REASON]
    node = _node(tmp_path, answer_evaluate=True, evaluate_noise=5.0, max_epsilon=8.0)
    answer = client_evaluate(cfg, node, nc, _arrays(cfg), 1)
    assert 0.0 <= answer.metrics[keys.ACCURACY] <= 1.0 and answer.metrics[keys.EPSILON] > 0
    (entry,) = _ledger(node)
    assert entry["kind"] == "evaluate" and entry["noise_multiplier"] == pytest.approx(5.0 / math.sqrt(2))
    tight = _node(tmp_path / "tight", answer_evaluate=True, evaluate_noise=5.0)
    low_budget = cfg.with_finetune(epsilon=entry["epsilon"] * 1.2)  # pays for one answer, not two (RDP: ~1.41x)
    assert keys.ACCURACY in client_evaluate(low_budget, tight, nc, _arrays(cfg), 1).metrics
    after = client_evaluate(low_budget, tight, nc, _arrays(cfg), 2)
    assert after.metrics[keys.REFUSED] and "past its lifetime budget" in after.strings[keys.REASON]
    fingerprint = _ledger(tight)[0]["dataset"]
    assert fingerprint[:8] not in after.strings[keys.REASON]  # the refusal reaches the server: no hash of the data


@pytest.mark.parametrize("ask, reason", [
    ({"dp": False}, "requires DP"),
    ({"epsilon": 16.0}, "allows at most 8"),
    ({"delta": 1e-3}, "allows at most 1e-05"),
    ({"unit": "image"}, "protects unit=patient"),
])
def test_a_run_asking_for_less_privacy_than_the_policy_is_refused_by_the_node(federation, tmp_path, ask, reason):
    base, cfg, _ = federation
    result = client_train(cfg.with_finetune(**ask), _node(tmp_path), {"partition-id": 0}, _arrays(cfg), 1)
    assert result.update is None and result.metrics[keys.REFUSED] and reason in result.strings[keys.REASON]
    assert not list((tmp_path / "client-0").glob("ledger-*.jsonl")) or not _ledger(_node(tmp_path))


def test_a_node_that_allows_no_dp_says_so_in_its_lifetime_ledger(federation, tmp_path):
    base, cfg, _ = federation
    node = _node(tmp_path, dp_required=False)
    result = client_train(cfg.with_finetune(dp=False), node, {"partition-id": 0}, _arrays(cfg), 1)
    assert result.update is not None and math.isinf(result.metrics[keys.EPSILON])
    assert [e["kind"] for e in _ledger(node)] == ["no-dp"]


def test_dp_false_from_the_server_sends_nothing_in_a_real_federation(federation, tmp_path):
    base, cfg, _ = federation
    result = simulate(replace(cfg, out=tmp_path / "nodp", rounds=1).with_finetune(dp=False),
                      state_root=tmp_path / "nodes")
    clients = result.rounds[1].clients
    assert [c["status"] for c in clients] == ["refused"] * 3 and all("requires DP" in c["reason"] for c in clients)
    start = models.load_checkpoint(cfg.checkpoint).model.state_dict()
    after = models.load_checkpoint(tmp_path / "nodp" / "checkpoints" / "last").model.state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start)


def test_a_fresh_out_on_the_same_data_continues_the_lifetime_spend(federation, tmp_path):
    base, cfg, _ = federation
    # the shared federation spent each hospital's epsilon 8 on this data; a new run dir resets nothing
    result = simulate(replace(cfg, out=tmp_path / "fresh", rounds=1), state_root=base / "nodes")
    clients = result.rounds[1].clients
    assert [c["status"] for c in clients] == ["refused"] * 3
    assert all("past its budget" in c["reason"] and c[keys.EPSILON] > 7.9 for c in clients)


def test_resume_with_changed_privacy_settings_is_refused_naming_them(federation):
    base, cfg, _ = federation
    resumed = replace(cfg, resume=True)
    assert resume_point(resumed) == 2
    for field, value in [("partitioning", "iid"), ("seed", 1)]:
        with pytest.raises(FedclipError, match=f"changed {field}"):
            resume_point(replace(resumed, **{field: value}))
    for field, value in [("epsilon", 4.0), ("delta", 1e-6), ("unit", "image"), ("dp", False), ("batch_size", 32),
                         ("epochs", 5)]:
        with pytest.raises(FedclipError, match=f"changed finetune.{field}"):
            resume_point(resumed.with_finetune(**{field: value}))
    with pytest.raises(FedclipError, match="pass --resume"):
        resume_point(cfg)


def test_server_side_dp_is_accounted_per_hospital_and_its_epsilon_survives_a_resume(federation, tmp_path):
    base, cfg, _ = federation
    run = replace(cfg, out=tmp_path / "central", rounds=1, server_dp="fixed", server_dp_noise=1.5)
    simulate(run, state_root=tmp_path / "nodes")
    # round 1 spent the nodes' budgets (planned for one round): fresh hospitals take round 2
    result = simulate(replace(run, rounds=2, resume=True), state_root=tmp_path / "nodes-2")
    central = [e.to_json() for e in result.ledger if not e.is_node]
    assert [e["releases"] for e in central] == [1, 2]  # the resumed run composed with round 1's release
    assert central[-1]["unit"] == "hospital" and central[-1]["denominator"] == 3
    assert "aggregated" not in central[-1]  # how many arrived is not part of the release
    ref = rdp_privacy_accountant.RdpAccountant()
    ref.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(1.5), 2))
    assert central[-1]["epsilon"] == pytest.approx(ref.get_epsilon(run.server_dp_delta), rel=0.02)
    state = json.loads((tmp_path / "central" / "state.json").read_text())
    del state["central_accountant"]  # a run dir from before the fix: resuming would restart epsilon at 0
    (tmp_path / "central" / "state.json").write_text(json.dumps(state))
    with pytest.raises(FedclipError, match="no central-DP accountant state"):
        simulate(replace(run, rounds=3, resume=True), state_root=tmp_path / "nodes")


def _deployed_app_reply(cfg, tmp_path, node_config):
    """The real ClientApp of a deployed SuperNode (no simulated hospitals), handed a train message."""
    app = make_client_app(cfg, None)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "state-dir": str(tmp_path / "state"),
                                                        **node_config}, state=RecordDict(), run_config={})
    return app(_message(cfg, _arrays(cfg)), context)


def test_a_deployed_node_trains_only_on_the_data_its_own_config_names(federation, tmp_path):
    base, cfg, _ = federation
    # the run config names data, partitioning and a seed; a node without data-dir must not take them
    for seed in (0, 1):
        reply = _deployed_app_reply(replace(cfg, partitioning="iid", seed=seed), tmp_path, {})
        assert keys.ARRAYS not in reply.content
        assert "names no data-dir" in reply.content[keys.CONFIG][keys.REASON]
    assert not list((tmp_path / "state").glob("ledger-*.jsonl")) and not list((tmp_path / "state").glob("members-*"))
    # with its own data-dir the node trains on that, whatever the run config's data says
    own = tmp_path / "own"
    from fedclip.data.records import read_metadata, write_metadata
    rows = read_metadata(base / "eval")
    write_metadata(own, [type(r)(str(r.path(base / "eval")), r.caption, r.labels, r.meta) for r in rows])
    reply = _deployed_app_reply(replace(cfg, data=tmp_path / "nowhere"), tmp_path, {"data-dir": str(own)})
    assert keys.ARRAYS in reply.content
    (manifest,) = (tmp_path / "state").glob("members-*.csv")
    assert len(manifest.read_text().splitlines()) == len(rows) + 1


def test_edits_to_the_metadata_keep_spending_from_the_same_cohort_budget(federation, tmp_path):
    from fedclip.data.records import read_metadata, write_metadata

    base, cfg, _ = federation
    rows = read_metadata(cfg.data)
    node = _node(tmp_path)
    nc = {"partition-id": 0, "num-partitions": 3}
    versions = [rows, rows[::-1], [type(r)(r.filepath, r.caption + " edited", r.labels, r.meta) for r in rows],
                rows[:-4]]  # the same patients: reordered, a caption edited, a patient fewer
    replies, spent = [], []
    for i, version in enumerate(versions):
        data = tmp_path / f"v{i}"
        write_metadata(data, [type(r)(str(r.path(cfg.data)), r.caption, r.labels, r.meta) for r in version])
        reply = client_train(replace(cfg, data=data, rounds=4), node, nc, _arrays(cfg), i + 1)
        replies.append(reply)
        spent.append(reply.metrics.get(keys.EPSILON))
    (ledger_file,) = node.state_dir.glob("ledger-*.jsonl")
    assert ledger_file.name == "ledger-cohort-default.jsonl"
    entries = _ledger(node)
    assert len({e["data_fingerprint"] for e in entries if e["kind"] == "train"}) >= 3  # other data versions ...
    assert spent == sorted(spent) and spent[0] < spent[-1] <= 8.0 + 1e-6  # ... one lifetime budget, spent once
    assert len({r.strings[keys.DATASET_ID] for r in replies}) == 1  # the id the server sees never changes
    # a disjoint cohort is the privacy officer's decision, made in the policy
    other = Node("client-0", NodePolicy(cohort="study-2027"), node.state_dir, deployed=False)
    assert client_train(cfg, other, nc, _arrays(cfg), 1).update is not None
    assert {p.name for p in node.state_dir.glob("ledger-*.jsonl")} == {
        "ledger-cohort-default.jsonl", "ledger-cohort-study-2027.jsonl"}


def test_a_node_with_no_labelled_record_replies_and_is_charged_exactly_as_one_with_records(federation, tmp_path):
    from fedclip.data.records import read_metadata, write_metadata

    base, cfg, _ = federation
    rows = read_metadata(cfg.data)
    unlabelled = tmp_path / "unlabelled"
    write_metadata(unlabelled, [type(r)(str(r.path(cfg.data)), r.caption, {**r.labels, "dr_grade": None}, r.meta)
                                for r in rows])
    nc = {"partition-id": 0, "num-partitions": 3}
    with_labels = client_train(cfg, _node(tmp_path / "a", dataset_size=15), nc, _arrays(cfg), 1)
    without = client_train(replace(cfg, data=unlabelled), _node(tmp_path / "b", dataset_size=15), nc, _arrays(cfg), 1)
    assert with_labels.update is not None and without.update is not None  # no "failed": no free bit
    assert set(with_labels.metrics) == set(without.metrics)
    for key in (keys.EPSILON, keys.NOISE_MULTIPLIER, keys.SAMPLE_RATE, keys.STEPS, keys.NUM_EXAMPLES):
        assert with_labels.metrics[key] == without.metrics[key]
    assert [e["kind"] for e in _ledger(_node(tmp_path / "b"))] == ["train"]
    start = _arrays(cfg)["visual.proj"]
    assert not torch.equal(without.update["visual.proj"], start)  # noise-only steps moved it
    evaluated = client_evaluate(replace(cfg, data=unlabelled), _node(tmp_path / "c", answer_evaluate=True), nc,
                                _arrays(cfg), 1)
    assert keys.ACCURACY in evaluated.metrics and [e["kind"] for e in _ledger(_node(tmp_path / "c"))] == ["evaluate"]


def test_a_spent_budget_or_a_malformed_request_is_refused_before_any_data_is_read(federation, tmp_path):
    base, cfg, _ = federation
    spent = _node(base / "nodes", "client-0")  # the shared federation spent its epsilon 8
    gone = replace(cfg, data=tmp_path / "no-such-dir")  # reading it would fail with "failed"
    reply = client_train(gone, spent, {"partition-id": 0}, _arrays(cfg), 9)
    assert reply.metrics[keys.REFUSED] and "past its budget" in reply.strings[keys.REASON]
    for ask, reason in [({"lr": float("nan")}, "finetune.lr=nan"), ({"max_grad_norm": 1e9}, "finetune.max_grad_norm"),
                        ({"batch_size": 0}, "finetune.batch_size=0")]:
        reply = client_train(gone.with_finetune(**ask), _node(tmp_path), {"partition-id": 0}, _arrays(cfg), 1)
        assert reply.metrics[keys.REFUSED] and reason in reply.strings[keys.REASON]


def test_patient_ids_differing_only_in_case_or_spaces_are_one_patient():
    from fedclip.data.records import normalise_patient_id

    assert normalise_patient_id(" P-17 ") == normalise_patient_id("p-17") == "p-17"
    assert normalise_patient_id("Ann  Lee") == normalise_patient_id("ann lee")
    assert normalise_patient_id(None) == normalise_patient_id("  ") == ""


def _message(cfg, arrays, round_=1):
    return Message(RecordDict({keys.ARRAYS: ArrayRecord.from_torch_state_dict(arrays),
                               keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: round_})}),
                   dst_node_id=1, message_type="train")


def test_a_failing_node_tells_the_server_nothing_but_that_it_failed(federation, tmp_path):
    base, cfg, _ = federation
    broken = cfg.with_finetune(task="no_such_task")  # fails inside training, with details worth hiding
    app = make_client_app(broken, SimulatedNodes(tmp_path, [NodePolicy()] * 3))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(),
                      run_config={})
    reply = app(_message(cfg, _arrays(cfg)), context)
    assert dict(reply.content[keys.CONFIG]) == {keys.REASON: "failed: see the node's log"}
    assert set(reply.content[keys.METRICS]) == {keys.PARTITION, keys.FAILED} and keys.ARRAYS not in reply.content
    local = (tmp_path / "client-0" / "node.log").read_text()
    assert "no_such_task" in local and "Traceback" in local


def test_empty_poisson_batches_take_noise_only_steps_in_every_grad_sample_mode(federation, tmp_path):
    base, cfg, _ = federation
    nc = {"partition-id": 0}
    for unit, mode in (("image", "bk"), ("image", "hooks"), ("image", "ew"), ("patient", "bk"), ("patient", "hooks")):
        # one record per expected batch over ~60: many steps draw an empty batch
        run = cfg.with_finetune(grad_sample_mode=mode, batch_size=1, epochs=1, unit=unit)
        node = _node(tmp_path / f"{unit}-{mode}", dataset_size=60, unit=unit)
        result = client_train(run, node, nc, _arrays(cfg), 1)
        assert result.update is not None and result.metrics[keys.STEPS] == 60


def test_simulated_policies_are_per_hospital_and_unknown_keys_or_hospitals_are_errors(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[policy]\nmax_epsilon = 4.0\n[policy.client-1]\nmax_epsilon = 2.0\nanswer_evaluate = true\n")
    policies = load_simulated(path, 3)
    assert [p.max_epsilon for p in policies] == [4.0, 2.0, 4.0] and policies[1].answer_evaluate
    path.write_text("[policy.client-5]\nmax_epsilon = 2.0\n")
    with pytest.raises(FedclipError, match="client-5.*names no simulated hospital"):
        load_simulated(path, 3)
    path.write_text("[policy]\nmax_epsilno = 2.0\n")
    with pytest.raises(FedclipError, match="max_epsilno"):
        load_simulated(path, 3)
    assert negotiate(NodePolicy(), dp=True, epsilon=1.0, delta=1e-6, unit="patient").unit == "patient"


def test_patient_level_is_the_default_and_its_ledger_says_so(federation):
    base, cfg, result = federation
    for i in range(3):
        ledger = _ledger(_node(base / "nodes", f"client-{i}"))
        train = [e for e in ledger if e["kind"] == "train"]
        assert {e["unit"] for e in ledger} == {"patient"} and {e["grouping"] for e in train} == {"patient_id"}
        assert all(e["patient_epsilon"] is None for e in train)  # no group-privacy figure needed: it is per patient
        size = next(e["public_size"] for e in ledger if e["kind"] == "dataset-size")
        assert size >= 1  # ~15 patients (60 images / 4) + N(0, 20^2), once: small nodes should declare theirs
    assert {c[keys.UNIT] for r in result.rounds[1:] for c in r.clients} == {"patient"}


def test_images_without_patient_ids_are_excluded_counted_or_refused_as_the_policy_says(federation, tmp_path):
    from fedclip.data.records import read_metadata, write_metadata

    base, cfg, _ = federation
    rows = read_metadata(cfg.data)
    for r in rows[::5]:  # every hospital (partition) gets images without an id, and keeps others with one
        r.meta["patient_id"] = ""
    data = tmp_path / "data"
    write_metadata(data, [type(r)(str(r.path(cfg.data)), r.caption, r.labels, r.meta) for r in rows])
    run, nc = replace(cfg, data=data), {"partition-id": 0, "num-partitions": 3}
    refused = client_train(run, _node(tmp_path / "a", images_without_patient="refuse"), nc, _arrays(cfg), 1)
    assert refused.update is None and "some images have no patient_id" in refused.strings[keys.REASON]
    assert not any(ch.isdigit() for ch in refused.strings[keys.REASON])  # the count stays on the node
    own = _node(tmp_path / "b", images_without_patient="own-patient")
    assert client_train(run, own, nc, _arrays(cfg), 1).update is not None
    assert "counted as their own patient" in [e for e in _ledger(own) if e["kind"] == "train"][0]["grouping"]
    excluded = _node(tmp_path / "c")  # the default policy
    assert client_train(run, excluded, nc, _arrays(cfg), 1).update is not None
    assert "excluded from training" in [e for e in _ledger(excluded) if e["kind"] == "train"][0]["grouping"]


def test_every_grouping_uses_one_patient_key():
    """The node, the generator, partitions and the audits group by records.patient_key: a missing id is
    its own unit named by the file (stable across subsets), never by a position in one list."""
    from fedclip.data.records import Record, patient_key

    assert patient_key(Record("a.png", "", {}, {"patient_id": " P-17"})) == "p-17"
    assert patient_key(Record("x/b.png", "", {}, {})) == patient_key(Record("x/b.png", "", {}, {"patient_id": " "}))
    assert patient_key(Record("x/b.png", "", {}, {})) != patient_key(Record("x/c.png", "", {}, {}))
