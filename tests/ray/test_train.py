"""The default `rlpt train` on real components: it learns (two seeds), and its run directory is complete."""

import json

import pytest
import torch

from actors.launch import train
from rlpt.algorithms import algorithm_of
from rlpt.config import load_config
from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts

pytestmark = pytest.mark.ray

REQUIRED = ["step", "policy_version", "reward/mean", "reward/correct_frac", "tokens/generated", "timing/rollout",
            "timing/verify", "timing/train", "timing/sync", "timing/step", "logprob_gap/mean"]


@pytest.mark.parametrize("seed", [0, 1])
def test_default_run_learns(default_runs, seed):
    cfg, run_dir, seconds = default_runs[seed]
    rows = read_metrics(run_dir / "metrics.jsonl")
    rewards = [r["reward/mean"] for r in rows]
    curve = {r["step"]: round(r["reward/mean"], 3) for r in rows if r["step"] % 10 == 0}
    print(f"seed {seed}: {seconds:.0f}s, reward every 10 steps: {json.dumps(curve)}")
    assert len(rows) == cfg.run.steps
    assert rewards[0] <= 0.2
    assert sum(rewards[-10:]) / 10 >= 0.6, curve
    assert seconds < 600


def test_run_directory_is_complete(default_runs):
    cfg, run_dir, _ = default_runs[0]
    assert load_config(run_dir / "config.yaml") == cfg
    rows = read_metrics(run_dir / "metrics.jsonl")
    for r in rows:
        assert set(REQUIRED) <= set(r), set(REQUIRED) - set(r)
        assert r["logprob_gap/mean"] < 1e-3  # engine == learner on the trained tokens, every step
        assert r.get("sync/probe_max_abs_diff", 0.0) < cfg.sync.probe_tolerance
        assert 0 < r["timing/train_learner"] < r["timing/train"]  # the rank's share, inside the driver's call
    # the probe: on the first sync, then every sync.probe_every-th version (absent, not 0, in between)
    every = cfg.sync.probe_every
    assert [r["step"] for r in rows if "sync/probe_max_abs_diff" in r] == [
        s for s in range(cfg.run.steps) if s == 0 or (s + 1) % every == 0]
    assert [r["policy_version"] for r in rows] == list(range(1, cfg.run.steps + 1))
    assert rows[-1]["learner/optimizer_steps"] == algorithm_of(cfg).lr_horizon(cfg) == cfg.run.steps
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["prompts"] == report["kept"] == cfg.data.arith.num_prompts and report["skipped_too_long"] == 0
    table = read_rollouts(run_dir)
    per_step = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    assert table.num_rows == cfg.run.steps * per_step
    assert {"prompt", "completion", "reward", "error", "policy_version"} <= set(table.column_names)


def test_plot_of_the_default_run(default_runs, tmp_path):
    """`rlpt plot` on a real run directory: every panel but evaluation (none configured) has the run's line."""
    import numpy as np
    from matplotlib.image import imread

    from rlpt.plots import plot_runs

    _, run_dir, _ = default_runs[0]
    res = plot_runs([run_dir], tmp_path / "plot.png")
    assert res.empty == ("evaluation",)
    img = imread(res.path)[..., :3]
    blue = np.array([0x1F, 0x77, 0xB4]) / 255  # C0, the first run's colour
    for title, (left, top, right, bottom) in res.panels.items():
        if title not in res.empty and title != "step time by phase":
            share = float((np.abs(img[top:bottom, left:right] - blue).max(axis=-1) < 0.08).mean())
            assert share > 0.0005, title


def test_report_of_the_default_run(default_runs, tmp_path):
    """`rlpt report` on a real run, opened in headless Chromium: no console error, no network, every metric cell
    equal to metrics.jsonl, sample groups of the last step shown."""
    from rlpt.report import write_report
    from tests.browser import chromium, open_page
    from tests.unit.test_report_browser import assert_page_shows_the_metrics, assert_renders

    cfg, run_dir, _ = default_runs[0]
    path, done = write_report(run_dir, tmp_path / "report.html")
    assert done
    with chromium() as driver:
        open_page(driver, path)
        assert_renders(driver)
        assert_page_shows_the_metrics(driver, read_metrics(run_dir / "metrics.jsonl"))
        groups = driver.execute_script("return [...document.querySelectorAll('#groups .group h3')].map(h => h.textContent)")
        assert len(groups) == 3 and all(g.startswith(f"step {cfg.run.steps - 1} ") for g in groups), groups


def test_final_checkpoint_loads_in_transformers_and_vllm(default_runs, ray_cluster):
    from transformers import AutoModelForCausalLM

    from actors.rollout import RolloutWorker, engine_options
    from rlpt.algorithms.common import token_logprobs
    from rlpt.models import load_tokenizer
    from rlpt.preflight import inspect_model, run_shape

    cfg, run_dir, _ = default_runs[0]
    ckpt = run_dir / "checkpoints" / f"step_{cfg.run.steps:06d}"
    assert (ckpt / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = load_tokenizer(ckpt)("3+4=7", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        want = token_logprobs(model(torch.tensor([ids])).logits, torch.tensor([ids]))[0, 1:]
    tok = load_tokenizer(ckpt)
    facts = inspect_model(ckpt, tok)  # the checkpoint is a model directory like any other: preflight reads it
    opts = engine_options(cfg, str(ckpt), run_shape(cfg, facts, tok).max_model_len, facts.eos_ids)
    engine = ray_cluster.remote(RolloutWorker).options(num_cpus=1).remote("ckpt", opts, str(ckpt))
    try:
        got = torch.tensor(ray_cluster.get(engine.probe.remote(ids), timeout=300))
    finally:
        ray_cluster.kill(engine)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
