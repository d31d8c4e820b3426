"""Record keys exchanged between the ServerApp and the ClientApps, named once.

A client's reply carries only these keys: the DP update (`arrays`), data-independent facts about the
round (`metrics`: public numbers; `config`: public strings) — nothing computed from a hospital's
data unless it was privatized and charged to that hospital's ledger (see docs/privacy.md).
"""

from __future__ import annotations

# message sections
ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

# server -> client (train / evaluate config)
SERVER_ROUND = "server-round"  # set by Flower
ROUND_OFFSET = "round-offset"  # rounds completed before a resumed run started

# client -> server, numbers (MetricRecord)
ROUND = "round"
PARTITION = "partition"  # the node's partition id: node configuration, not data
NUM_EXAMPLES = "num-examples"  # the node's *public* dataset size (declared, or noised once and charged)
UNIT_WEIGHT = "unit-weight"  # 1.0 from every node: uniform weights for accounted server-side DP
REFUSED = "refused"
FAILED = "failed"
EPSILON = "epsilon"  # cumulative, the node's lifetime on its cohort
EPSILON_ROUND = "epsilon-round"
EPSILON_BUDGET = "epsilon-budget"  # the effective budget: min(run config, node policy)
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
ACCURACY = "accuracy"  # only from a node whose policy answers evaluation, noised and charged

# client -> server, strings (ConfigRecord)
REASON = "reason"
UNIT = "unit"
NEIGHBOURING = "neighbouring"
ACCOUNTANT = "accountant"
DATASET_ID = "dataset-id"  # a random id the node drew once for its cohort (never a hash of data; edits keep it)

PUBLIC_METRICS = frozenset({ROUND, PARTITION, NUM_EXAMPLES, UNIT_WEIGHT, REFUSED, FAILED, EPSILON, EPSILON_ROUND,
                            EPSILON_BUDGET, DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS, ACCURACY})
PUBLIC_STRINGS = frozenset({REASON, UNIT, NEIGHBOURING, ACCOUNTANT, DATASET_ID})
"""Everything a reply may hold. `ACCURACY` is privatized and charged; the rest depend on no record."""
