"""Per-role Ray resource requests (actors/placement.py: pure functions of the config, no Ray needed)."""

import pytest

from actors.placement import engine_bundle, engine_options, local_custom_resources, needed_cpus, reference_options
from rlpt.config import load_config

pytestmark = pytest.mark.unit


def test_engine_requests_carry_the_rollout_node_resource_and_tp_gpus():
    cfg = load_config(None, ["cluster.gpus_per_engine=1", "rollout.tensor_parallel_size=4",
                             "cluster.engine_resources={rlpt_rollout: 1}"])
    assert engine_options(cfg) == {"num_cpus": 1, "num_gpus": 4, "resources": {"rlpt_rollout": 1.0}}
    assert engine_bundle(cfg) == {"CPU": 1.0, "GPU": 4.0, "rlpt_rollout": 1.0}
    assert reference_options(cfg) == {"num_cpus": 1, "num_gpus": 1}  # not pinned to the (spot) rollout nodes


def test_cpu_bundle_has_no_gpu_key():
    assert engine_bundle(load_config(None, [])) == {"CPU": 1.0}


def test_local_cluster_offers_the_pinned_resources_for_every_rank_and_the_largest_fleet():
    cfg = load_config(None, ["learner.num_ranks=2", "rollout.num_workers=2", "cluster.rollout.max=3",
                             "cluster.learner_resources={rlpt_learner: 1}", "cluster.engine_resources={rlpt_rollout: 1}"])
    assert local_custom_resources(cfg) == {"rlpt_learner": 2.0, "rlpt_rollout": 3.0}
    assert needed_cpus(cfg) == 2 + 3 + 1 + 1 + 1  # ranks, fleet max, verifier, reference, spare
    assert local_custom_resources(load_config(None, [])) == {}
