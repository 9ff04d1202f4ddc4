"""`rlpt plot` (rlpt/plots.py): the PNG is read back and each panel checked for the runs' colours."""

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.image import imread

from rlpt.cli import main
from rlpt.errors import UsageError
from rlpt.plots import PANELS, load_run, plot_runs, smooth

pytestmark = pytest.mark.unit

STEPS = 40


def write_run(run_dir: Path, slope: float, extra: dict[str, float] | None = None, repeat_step: int | None = None):
    """A metrics.jsonl in the writer's format (one JSON object per line, `step` first). Every curve depends on
    `slope`, so two runs' lines never cover each other."""
    run_dir.mkdir(parents=True)
    rows = []
    k = 1.0 + 20 * slope
    for s in range(STEPS):
        r = {"step": s, "reward/mean": min(1.0, 0.05 + slope * s), "reward/correct_frac": min(1.0, slope * s),
             "response/len_mean": k * (2.0 + 0.01 * s), "response/truncated_frac": 0.5 * k,
             "tokens/per_s": k * (5000.0 + 10 * s), "logprob_gap/mean": k * 1e-6, "logprob_gap/max": k * 3e-6,
             "actor/kl": k * 0.01, "actor/clip_frac": k * 0.02, "staleness/mean": k - 1, "timing/step": 0.12,
             "timing/rollout": 0.05, "timing/verify": 0.005, "timing/train": 0.03, "timing/sync": 0.025,
             **(extra or {})}
        rows.append(r)
        if s == repeat_step:  # a resumed run logs this step again: the second row wins
            rows.append({**r, "reward/mean": 0.999})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def share_of(rgb: np.ndarray, color: str) -> float:
    want = np.array(mcolors.to_rgb(color))
    return float((np.abs(rgb - want).max(axis=-1) < 0.08).mean())


def test_every_panel_draws_both_runs_and_the_png_reads_back(tmp_path):
    write_run(tmp_path / "a", slope=0.02, extra={"off_policy/is_weight_mean": 1.1})
    write_run(tmp_path / "b", slope=0.005, extra={"eval/pass@1": 0.4})
    res = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out" / "p.png")
    img = imread(res.path)[..., :3]
    assert img.shape == (1200, 1600, 3)
    assert res.empty == () and set(res.panels) == set(PANELS)
    for title, (left, top, right, bottom) in res.panels.items():
        assert 200 < right - left < 600 and 150 < bottom - top < 450, (title, res.panels[title])
        panel = img[top:bottom, left:right]
        assert panel.std() > 0.05, f"{title}: blank"
        if title == "step time by phase":  # bars in the phase colours, one per run
            assert share_of(panel, "#4c72b0") > 0.01 and share_of(panel, "#55a868") > 0.01, title
        elif title == "evaluation":  # only run b has eval/*
            assert share_of(panel, "C1") > 0.0005 and share_of(panel, "C0") == 0.0, title
        else:
            assert share_of(panel, "C0") > 0.0005 and share_of(panel, "C1") > 0.0005, title


def test_a_panel_without_metrics_says_so(tmp_path):
    write_run(tmp_path / "run", slope=0.01)
    res = plot_runs([tmp_path / "run"], tmp_path / "p.png")
    assert res.empty == ("evaluation",)
    left, top, right, bottom = res.panels["evaluation"]
    panel = imread(res.path)[top:bottom, left:right, :3]
    assert share_of(panel, "C0") == 0.0 and share_of(panel, "gray") > 0.0005  # the note, in grey


def test_a_step_logged_twice_keeps_the_last_row_and_same_names_get_their_parent(tmp_path):
    write_run(tmp_path / "x" / "run", slope=0.01, repeat_step=5)
    rows = load_run(tmp_path / "x" / "run")
    assert [r["step"] for r in rows] == list(range(STEPS)) and rows[5]["reward/mean"] == 0.999
    write_run(tmp_path / "y" / "run", slope=0.01)
    assert main(["plot", str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]) == 0
    assert (tmp_path / "x" / "run" / "plot.png").is_file()


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "p.png")
    assert main(["plot", str(tmp_path)]) == 2


def test_smooth_is_a_trailing_mean():
    assert smooth([0.0, 3.0, 6.0, 9.0], 3) == [0.0, 1.5, 3.0, 6.0]
