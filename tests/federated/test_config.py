from fedclip import config as cfglib
from fedclip.audits.mia import finetune_settings
from fedclip.federated.config import FederateConfig


def test_one_node_over_the_federation_is_every_rounds_epochs_back_to_back_and_the_audits_rerun_it():
    fed = FederateConfig(rounds=4).with_finetune(epochs=3, lr=0.5, dp=True, epsilon=2.0)
    node = fed.per_node()
    assert (node.epochs, node.rounds, node.lr, node.epsilon, node.unit) == (12, 1, 0.5, 2.0, "patient")
    # the MIA's reference models and the epsilon audit's re-run read it from a run's resolved [federate] table
    rerun = finetune_settings(cfglib.plain(fed))
    assert (rerun.epochs, rerun.rounds, rerun.lr, rerun.epsilon) == (12, 1, 0.5, 2.0)
    assert rerun.unit == "image"  # their trainers have no patient grouping: results say "per image"
