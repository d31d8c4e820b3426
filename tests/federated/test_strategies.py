"""The strategy guard on hand-built Flower messages: no Ray, no nodes; Flower's own FedAvg aggregates."""

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from fedclip.errors import FedclipError
from fedclip.federated import keys, strategies
from fedclip.federated.task import FederateConfig

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
