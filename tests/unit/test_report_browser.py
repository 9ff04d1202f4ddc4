"""The report in a real browser (headless Chromium): it renders, logs no console error, loads nothing from the
network, shows exactly the run's numbers, and its filters work. The same checks on a real run's report:
tests/ray/test_train.py::test_report_of_the_default_run."""

import json
import statistics

import numpy as np

from rlpt.report import write_report
from tests.browser import chromium, console_errors, open_page, screenshot
from tests.unit.report_fixture import HOSTILE, STEPS, make_run

CELLS = "return [...document.querySelectorAll('#metrics td[data-key]')].map(td => [td.dataset.step, td.dataset.key, td.textContent])"


def assert_page_shows_the_metrics(driver, rows):
    """Every metric cell equals metrics.jsonl to the 6 digits shown, and no value is missing."""
    cells = driver.execute_script(CELLS)
    want = {(str(r["step"]), k): v for r in rows for k, v in r.items() if k != "step"}
    assert len(cells) == len({k for r in rows for k in r} - {"step"}) * len(rows)
    for step, key, text in cells:
        value = want.get((step, key))
        if value is None:
            assert text == "null", (step, key, text)
        else:
            assert abs(float(text) - value) <= 5e-6 * max(abs(value), 1e-30), (step, key, text, value)


def assert_renders(driver):
    assert console_errors(driver) == []
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0  # no network
    img = screenshot(driver)
    assert img.shape[0] > 500 and img.std() > 0.05
    assert (np.abs(img - 1.0).max(axis=-1) > 0.1).mean() > 0.03  # more than a blank page with a title


def test_report_in_chromium(tmp_path):
    rows = make_run(tmp_path / "run")
    path, _ = write_report(tmp_path / "run")
    with chromium() as driver:
        open_page(driver, path)
        assert_renders(driver)
        assert_page_shows_the_metrics(driver, rows)
        summary = dict(driver.execute_script(
            "return [...document.querySelectorAll('#summary td')].map(td => [td.dataset.label, td.textContent])"))
        assert float(summary["last reward/mean"]) == rows[-1]["reward/mean"]
        median = statistics.median(r["timing/step"] for r in rows)
        assert abs(float(summary["median step seconds"]) - median) <= 5e-6 * median
        assert summary["steps logged"] == str(STEPS)
        evals = [r for r in rows if "eval/pass@1" in r]  # the last evaluation's scores, not its counts
        assert float(summary["last eval/pass@1"]) == evals[-1]["eval/pass@1"] and summary["evaluations"] == "3"
        assert "last eval/prompts" not in summary
        kinds = driver.execute_script("return [...document.querySelectorAll('#events tbody tr')].map(r => r.dataset.kind)")
        assert kinds == ["fault", "fleet", "sync", "verifier", "checkpoint"]
        assert "steps: 12" in driver.find_element("id", "config").text

        # sample rollouts: the last step by default, three groups; the hostile completion shows as text
        groups = driver.execute_script("return [...document.querySelectorAll('#groups .group')].map(g => g.dataset.kind)")
        assert groups == ["best", "worst", "random"]
        shown = driver.execute_script("return [...document.querySelectorAll('#groups pre')].map(p => p.textContent)")
        assert HOSTILE in shown and driver.execute_script("return window.pwned") is None
        info = driver.execute_script("return [...document.querySelectorAll('.kind-best td.text')].map(t => t.textContent)")
        assert "pred=4 format=1" in info  # the verifier's info of the best group's sample 1 (prompt 3, sample 1)
        # filters: step 7 with errors only leaves the one error row
        driver.execute_script("const s = document.getElementById('step'); s.value = '7';"
                              "s.dispatchEvent(new Event('input'));"
                              "const e = document.getElementById('errors'); e.checked = true;"
                              "e.dispatchEvent(new Event('input'));")
        errors = driver.execute_script("return [...document.querySelectorAll('#groups td.error')].map(t => t.textContent)")
        assert errors == ["timeout: verifier took > 10s"]
        driver.execute_script("const f = document.getElementById('metric-filter'); f.value = 'timing/';"
                              "f.dispatchEvent(new Event('input'));")
        heads = driver.execute_script("return [...document.querySelectorAll('#metrics th')].map(t => t.textContent)")
        assert heads[0] == "step" and heads[1:] and all(h.startswith("timing/") for h in heads[1:])
        assert console_errors(driver) == []


def test_report_of_a_run_in_progress_in_chromium(tmp_path):
    rows = make_run(tmp_path / "run", steps_logged=3, total_steps=40)
    path, done = write_report(tmp_path / "run", refresh_s=600)
    assert not done
    with chromium() as driver:
        open_page(driver, path)
        assert_renders(driver)
        assert "3 of 40 steps" in driver.find_element("id", "banner").text
        assert_page_shows_the_metrics(driver, rows)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
