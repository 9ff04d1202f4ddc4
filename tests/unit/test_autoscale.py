"""The rollout-fleet autoscaling policy (rlpt/autoscale.py): hand-computed decisions."""

import pytest

from rlpt.autoscale import FleetPolicy

pytestmark = pytest.mark.unit

P = FleetPolicy(min_size=1, max_size=3, target_share=0.5, band=0.1, cooldown_steps=3)


@pytest.mark.parametrize("share, size, want", [
    (0.61, 1, 2),  # above 0.6: one more
    (0.60, 1, 1),  # on the edge of the band: keep
    (0.95, 3, 3),  # rollout-bound but at max
    (0.39, 2, 1),  # below 0.4: one fewer
    (0.40, 2, 2),  # on the lower edge: keep
    (0.05, 1, 1),  # idle but at min
    (0.50, 2, 2),  # on target
])
def test_band_and_bounds(share, size, want):
    assert P.decide(step=10, wait_share=share, size=size, last_change_step=None).target == want


def test_cooldown_counts_steps_since_the_last_change():
    assert P.decide(step=12, wait_share=0.9, size=2, last_change_step=10).target == 2  # 2 steps < 3
    assert P.decide(step=13, wait_share=0.9, size=2, last_change_step=10).target == 3  # 3 steps: allowed


def test_out_of_bounds_size_is_pulled_back_even_in_cooldown():
    d = P.decide(step=1, wait_share=0.5, size=5, last_change_step=0)
    assert d.target == 3 and "out of bounds" in d.reason
    assert P.decide(step=1, wait_share=0.5, size=0, last_change_step=0).target == 1


def test_config_bounds_default_to_num_workers_and_are_validated():
    from rlpt.config import ConfigError, load_config

    cfg = load_config(None, ["rollout.num_workers=2"])
    assert cfg.fleet_bounds() == (2, 2)
    cfg = load_config(None, ["rollout.num_workers=2", "cluster.rollout.min=1", "cluster.rollout.max=4"])
    assert cfg.fleet_bounds() == (1, 4)
    with pytest.raises(ConfigError, match="min <= rollout.num_workers <= max"):
        load_config(None, ["rollout.num_workers=3", "cluster.rollout.max=2"])
