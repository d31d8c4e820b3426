"""The strategy guard on hand-built Flower messages: no Ray, no nodes; Flower's own FedAvg aggregates."""

import time

import numpy as np
import pytest
import scipy.stats
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from fedclip.errors import FedclipError
from fedclip.federated import keys, strategies
from fedclip.federated.config import FederateConfig

SHAPES = {"w": (2, 3), "b": (3,)}


def _reply(node: int, value: float, shapes: dict = SHAPES, dtype: type = np.float32) -> Message:
    """Node `node`'s reply to round 1's train instruction, as the SuperLink hands it to the ServerApp."""
    arrays = ArrayRecord({k: Array(np.full(s, value, dtype=dtype)) for k, s in shapes.items()})
    metrics = MetricRecord({keys.PARTITION: float(node), keys.NUM_EXAMPLES: 10.0, keys.UNIT_WEIGHT: 1.0})
    metadata = Metadata(run_id=1, message_id=f"reply-{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id=f"train-{node}", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type="train")
    return Message(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}), metadata=metadata)


def _strategy(min_replies: int, seen: list, **settings):
    cfg = FederateConfig(clients=3, min_replies=min_replies, **settings)
    strategy = strategies.build(cfg, lambda round_, report, central: seen.append(report))
    strategy._global = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}  # what configure_train sent
    return strategy


def test_a_round_with_enough_usable_updates_is_averaged_and_the_broken_one_reported():
    seen: list = []
    arrays, _ = _strategy(2, seen).aggregate_train(1, [_reply(1, 1.0), _reply(2, 3.0),
                                                       _reply(3, float("nan"))])
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 2.0))
    assert [row["status"] for row in seen[0]] == ["aggregated", "aggregated", "rejected"]


def test_fewer_usable_updates_than_min_replies_leave_the_model_as_it_was():
    seen: list = []
    wrong = {"w": (3, 2), "b": (3,)}
    result = _strategy(2, seen).aggregate_train(1, [_reply(1, 1.0), _reply(2, 3.0, wrong)])
    assert result == (None, None)  # Flower keeps the previous global arrays
    assert [row["status"] for row in seen[0]] == ["not aggregated", "rejected"]
    assert "min_replies=2" in seen[0][0]["reason"]
    # the same replies with the default min_replies=1: the one usable update is the round's result
    arrays, _ = _strategy(1, seen).aggregate_train(1, [_reply(1, 1.0), _reply(2, 3.0, wrong)])
    np.testing.assert_allclose(arrays["b"].numpy(), np.ones(3))


def test_wrong_dtype_and_absurdly_large_updates_are_rejected_with_the_reason():
    seen: list = []
    replies = [_reply(1, 1.0), _reply(2, 1.0, dtype=np.float64), _reply(3, 1e30)]
    arrays, _ = _strategy(1, seen).aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), np.ones((2, 3)))  # only the sound update
    assert [row["status"] for row in seen[0]] == ["aggregated", "rejected", "rejected"]
    assert "dtype float64, expected float32" in seen[0][1]["reason"]
    assert "more than max_update_norm=1000" in seen[0][2]["reason"]
    # the bound is a setting: a federation that expects large steps raises it
    seen.clear()
    _strategy(1, seen, max_update_norm=1e31).aggregate_train(1, [_reply(3, 1e30)])
    assert seen[0][0]["status"] == "aggregated"


@pytest.mark.parametrize("bad", [0, 4])
def test_min_replies_outside_one_to_clients_is_refused(bad):
    with pytest.raises(FedclipError, match="min_replies must be between 1 and federate.clients"):
        FederateConfig(clients=3, min_replies=bad)


def _central(seen: list, **settings):
    """Accounted server-side DP as `build` makes it, with round 1 configured (its pending privacy event)."""
    cfg = FederateConfig(clients=3, min_replies=1, server_dp="fixed", **settings)
    strategy = strategies.build(cfg, lambda round_, report, central: seen.append((report, central)))
    zeros = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in zeros.items()})
    strategy._global = zeros
    return strategy


def _change(strategy, replies, round_: int) -> np.ndarray:
    strategy._pending_events[round_] = None  # what configure_train leaves: this test composes no event
    arrays, _ = strategy.aggregate_train(round_, replies)
    return np.concatenate([arrays[k].numpy().ravel() for k in SHAPES])


def test_server_side_dp_does_not_reveal_a_hospitals_absence_beyond_its_epsilon():
    # Each hospital's change has norm 30 (clipped to C = 1). Before the fix the denominator and the noise
    # followed the k updates that arrived, so the change's size told 3 hospitals from 2 perfectly.
    seen: list = []
    big = 30 / np.sqrt(9)

    def refused() -> Message:
        reply = _reply(3, big)
        reply.content[keys.METRICS] = MetricRecord({keys.PARTITION: 3.0, keys.REFUSED: 1.0})
        return reply

    # the mean moves by one clipped change over n = 3 (sum / n, an absent hospital a zero update); checked with
    # negligible noise, since the OS noise cannot be seeded and a noisy mean would make the check a coin toss
    quiet = _central([], server_dp_noise=1e-6, server_dp_clip=1.0)
    step = _change(quiet, [_reply(1, big), _reply(2, big), _reply(3, big)], 1) \
        - _change(quiet, [_reply(1, big), _reply(2, big), refused()], 2)
    np.testing.assert_allclose(step, np.full(9, 1 / 3 / 3), atol=1e-4)
    strategy = _central(seen, server_dp_noise=5.0, server_dp_clip=1.0)
    present, absent = [], []
    for t in range(1000):
        present.append(_change(strategy, [_reply(1, big), _reply(2, big), _reply(3, big)], 2 * t + 1))
        absent.append(_change(strategy, [_reply(1, big), _reply(2, big), refused()], 2 * t + 2))
    present, absent = np.array(present), np.array(absent)
    # ... and the noise is z * C / n in both cases (it was z * C / k)
    assert present.std() == pytest.approx(5.0 / 3, rel=0.1) and absent.std() == pytest.approx(5.0 / 3, rel=0.1)
    # the best threshold on the change's norm: Gaussian DP with mu = 1 / z allows an advantage of
    # 2 Phi(mu / 2) - 1 = 0.08; with 1,000 draws per side the largest gap over all cuts (a two-sample
    # Kolmogorov-Smirnov statistic) exceeds it by 0.12 with probability ~1e-5
    norms_p, norms_a = np.linalg.norm(present, axis=1), np.linalg.norm(absent, axis=1)
    assert scipy.stats.ks_2samp(norms_p, norms_a).statistic < 0.08 + 0.12
    central = [c for _, c in seen if c is not None][-1]
    assert central["denominator"] == 3 and "aggregated" not in central
    assert central["noise_source"] == "os-csprng"


def test_a_reply_with_a_unit_weight_other_than_one_is_dropped_with_the_reason():
    seen: list = []
    strategy = _central(seen, server_dp_noise=1.0)
    odd = _reply(2, 1.0)
    odd.content[keys.METRICS] = MetricRecord({keys.PARTITION: 2.0, keys.NUM_EXAMPLES: 10.0, keys.UNIT_WEIGHT: 7.0})
    _change(strategy, [_reply(1, 1.0), odd], 1)
    report, _ = seen[0]
    assert [row["status"] for row in report] == ["aggregated", "rejected"]
    assert "unit-weight is 7.0" in report[1]["reason"]
