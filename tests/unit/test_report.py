"""`rlpt report` (rlpt/report.py) without a browser: events, sample groups, escaping, in-progress runs.
The page in a real browser: tests/unit/test_report_browser.py."""

import json
import re

import pytest

from rlpt.cli import main
from rlpt.report import Event, events, render, sample_groups, write_report
from tests.unit.report_fixture import HOSTILE, STEPS, make_run

pytestmark = pytest.mark.unit


def test_events_come_from_counter_increases_and_per_step_flags(tmp_path):
    rows = make_run(tmp_path / "run")
    assert events(rows) == [
        Event(5, "fault", "rollout engine replaced"), Event(5, "fleet", "fleet size 2 -> 1"),
        Event(5, "sync", "weight sync retried 1 time(s)"), Event(7, "verifier", "2 rollout(s) with a verifier error"),
        Event(STEPS - 1, "checkpoint", "checkpoint written (0.50s)")]


def test_sample_groups_are_the_best_worst_and_a_random_other_group_per_step(tmp_path):
    make_run(tmp_path / "run")
    groups = sample_groups(tmp_path / "run", steps=3)
    assert [(g["step"], g["kind"]) for g in groups] == [(s, k) for s in range(STEPS - 3, STEPS)
                                                       for k in ("best", "worst", "random")]
    for g in groups:
        want = {"best": {"u3"}, "worst": {"u0"}, "random": {"u1", "u2"}}[g["kind"]]
        assert g["prompt_uid"] in want and len(g["samples"]) == 3
    best = groups[0]
    assert best["mean_reward"] == (1 / 3 + 2 / 3 + 1) / 3 and [s["reward"] for s in best["samples"]] == [1 / 3, 2 / 3, 1.0]
    assert sample_groups(tmp_path / "run", steps=3, seed=0) == groups  # the random pick is seeded


def test_model_output_is_data_never_markup(tmp_path):
    make_run(tmp_path / "run")
    page, done = render(tmp_path / "run")
    assert done
    assert HOSTILE not in page and "<script>window.pwned" not in page  # escaped inside the JSON block
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert any(s["completion"] == HOSTILE for g in data["groups"] for s in g["samples"])
    assert page.count("<script") == 2  # the data block and the page's own script, nothing else


def test_a_run_in_progress_says_so_and_reloads(tmp_path):
    make_run(tmp_path / "run", steps_logged=4, total_steps=50)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')  # the writer is mid-line
    page, done = render(tmp_path / "run", refresh_s=7)
    assert not done and '<meta http-equiv="refresh" content="7">' in page and "4 of 50 steps" in page
    make_run(tmp_path / "done")
    page, done = render(tmp_path / "done")
    assert done and "http-equiv" not in page and 'id="banner"' not in page


def test_self_contained_no_external_resources(tmp_path):
    make_run(tmp_path / "run")
    page, _ = render(tmp_path / "run")
    assert not re.search(r'(src|href)="(https?:)?//', page) and "@import" not in page and "url(http" not in page


def test_cli_writes_report_html_next_to_the_run(tmp_path, capsys):
    make_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").is_file() and "run finished" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    path, done = write_report(tmp_path / "run", tmp_path / "x" / "r.html")
    assert path.is_file() and done and not list((tmp_path / "x").glob("*.tmp"))


def test_rollouts_written_before_the_info_column_are_still_read(tmp_path):
    import pyarrow.parquet as pq

    from rlpt.rollout_log import SCHEMA, read_rollouts

    make_run(tmp_path / "run", steps_logged=2)
    old = pq.read_table(tmp_path / "run" / "rollouts" / "step_000000.parquet").drop_columns(
        ["info", "learner_version", "trained", "newest_version"])
    pq.write_table(old, tmp_path / "run" / "rollouts" / "step_000000.parquet")  # as an older rlpt wrote it
    table = read_rollouts(tmp_path / "run")
    assert table.schema.names == SCHEMA.names and table.num_rows == 2 * 12
    assert table.column("info").to_pylist()[:12] == [None] * 12
    assert table.column("learner_version").to_pylist()[:12] == [None] * 12
