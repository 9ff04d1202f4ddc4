"""Fixture tests for the built-in verifiers (realistic outputs: right, wrong, malformed, empty, huge, unicode) and
for the plug-in loader."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import rlpt.verifiers.math as math_verifier
from rlpt.types import Prompt, Score
from rlpt.verifiers import VERIFIERS, VerifierLoadError, countdown, exact, load_plugin, load_verifier

pytestmark = pytest.mark.unit

FIX = "tests.unit.plugins_fixture"
HUGE_FILLER = "Let me reconsider the problem once more. " * 5000  # ~205k chars, no digits


def _prompt(answer: str | None, **meta: Any) -> Prompt:
    return Prompt(uid="t0", text="question", answer=answer, meta=meta)


def _timed(fn: Any, *args: Any) -> tuple[Score, float]:
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


# ---- math -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "completion", "correct"),
    [
        ("\\frac{3}{4}", "We have 3 of 4 slices, so the fraction is $\\boxed{\\frac{3}{4}}$.", True),
        ("0.75", "Thus $p = \\frac{3}{4}$.", True),
        ("\\sqrt{2}", "The diagonal of the unit square is \\boxed{\\sqrt{2}}", True),
        ("42", "6 * 7 = 42, so the final answer is \\boxed{42}.", True),
        ("42", "6 * 7 = 41, so the final answer is \\boxed{41}.", False),
        ("42", "答案是 \\boxed{42} ✅ 🎉", True),
        ("42", "答案是 \\boxed{43} ✅", False),
    ],
)
def test_math_right_and_wrong(answer: str, completion: str, correct: bool) -> None:
    score = math_verifier.verify(_prompt(answer), completion)
    assert score.correct is correct
    assert score.reward == (1.0 if correct else 0.0)
    assert "pred" in score.info


@pytest.mark.parametrize("completion", ["", "   \n", "I have no idea, sorry."])
def test_math_no_answer(completion: str) -> None:
    assert math_verifier.verify(_prompt("42"), completion) == Score(0.0, False, {"reason": "no answer found"})


@pytest.mark.parametrize("completion", ["\\boxed{", "$$ \\frac{1}{ $$ }}}", "\\boxed{\\left( ]", "\x00\x01\ufffd"])
def test_math_malformed_is_wrong_not_a_crash(completion: str) -> None:
    score = math_verifier.verify(_prompt("42"), completion)
    assert score.correct is False and score.reward == 0.0


def test_math_huge_completion_is_fast_and_reads_only_the_tail() -> None:
    score, took = _timed(math_verifier.verify, _prompt("42"), HUGE_FILLER + "So the answer is \\boxed{42}.")
    assert score.correct is True and took < 5.0
    # An answer before the last MAX_COMPLETION_CHARS is outside the window by design.
    score, took = _timed(math_verifier.verify, _prompt("42"), "\\boxed{42} " + HUGE_FILLER)
    assert score.correct is False and took < 5.0


def test_math_pathological_answer_times_out_in_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_verifier, "MAIN_THREAD_TIMEOUT_S", 1)
    score, took = _timed(math_verifier.verify, _prompt("42"), "\\boxed{10^{10^{10}}}")  # sympy hangs on this
    assert score.correct is False and score.info["reason"] == "math-verify timeout"
    assert took < 10.0


def test_math_works_off_the_main_thread() -> None:
    # math-verify's signal timeout raises ValueError outside the main thread unless disabled: we disable it there.
    results: list[Score | BaseException] = []

    def run() -> None:
        try:
            results.append(math_verifier.verify(_prompt("42"), "\\boxed{42}"))
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            results.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert len(results) == 1 and isinstance(results[0], Score) and results[0].correct is True


@pytest.mark.parametrize(
    ("answer", "message"), [(None, "has no answer"), (" ", "has no answer"), ("\\boxed{}", "not parseable")]
)
def test_math_bad_gold_is_a_data_error(answer: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=f"t0.*{message}|{message}.*t0"):
        math_verifier.verify(_prompt(answer), "\\boxed{42}")


# ---- exact / numeric --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "meta", "completion", "correct"),
    [
        ("Paris", {}, "  Paris\n", True),
        ("Paris", {}, "paris", False),
        ("Paris", {"case_sensitive": False}, "PARIS", True),
        ("Paris", {}, "The answer is Paris", False),
        ("Paris", {}, "", False),
        ("Zürich", {}, "Zürich ", True),
        ("straße", {"case_sensitive": False}, "STRASSE", True),
    ],
)
def test_exact(answer: str, meta: dict[str, Any], completion: str, correct: bool) -> None:
    score = exact.exact(_prompt(answer, **meta), completion)
    assert score.correct is correct and score.reward == float(correct)


def test_exact_huge_and_missing_answer() -> None:
    score, took = _timed(exact.exact, _prompt("Paris"), "Paris" + HUGE_FILLER)
    assert score.correct is False and took < 1.0 and len(score.info["pred"]) <= 200
    with pytest.raises(ValueError, match="no answer"):
        exact.exact(_prompt(None), "Paris")


@pytest.mark.parametrize(
    ("answer", "meta", "completion", "correct"),
    [
        ("42", {}, "42 42 7 + 9 1", True),  # answer first, then junk: the tiny-model case
        ("42", {}, "The answer is 42.", True),
        ("42", {}, "41 42", False),  # the first number is the committed one
        ("1234", {}, "1,234 apples", True),
        ("1234", {}, "1,2345", False),  # not a thousands group: reads as 1
        ("-7", {}, "−7", True),  # unicode minus
        ("-7", {}, "x = -7.0", True),
        ("3.14159", {"tol": 0.01}, "3.14", True),
        ("3.14159", {}, "3.14", False),
        ("42", {}, "forty-two", False),
        ("42", {}, "", False),
        ("42", {}, "٤٢", False),  # only ASCII digits count
    ],
)
def test_numeric(answer: str, meta: dict[str, Any], completion: str, correct: bool) -> None:
    score = exact.numeric(_prompt(answer, **meta), completion)
    assert score.correct is correct and score.reward == float(correct)


def test_numeric_huge_inputs_are_fast() -> None:
    score, took = _timed(exact.numeric, _prompt("7"), "7" + HUGE_FILLER)
    assert score.correct is True and took < 1.0
    score, took = _timed(exact.numeric, _prompt("7"), "9" * 200_000)  # overflows to inf: never correct
    assert score.correct is False and took < 1.0
    score, took = _timed(exact.numeric, _prompt("7"), HUGE_FILLER + "7")  # beyond the search window
    assert score.info == {"reason": "no number found"} and took < 1.0


def test_numeric_bad_gold_is_a_data_error() -> None:
    with pytest.raises(ValueError, match="not a number"):
        exact.numeric(_prompt("forty-two"), "42")


# ---- countdown --------------------------------------------------------------------------------------------------
CD = _prompt("24", numbers=[1, 3, 4, 6], target=24)


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("<think>6*4=24, and 3-1... hmm</think>\n<answer>6 / (1 - 3/4)</answer>", None),  # needs exact fractions
        ("<answer>1+3</answer> no wait <answer>(3 + 1) * 6</answer>", None),  # last tag wins; subset allowed
        ("(3+1)*6\nbecause 4*6 is 24", None),  # no tags: first line
        ("<answer>(3 + 1) * 6 = 24</answer>", None),
        ("<answer>(3 + 1) × 6</answer>", None),
        ("<answer>6 * 4 + 1 - 1</answer>", "uses number not provided: 1 (more often than given)"),
        ("<answer>8 * 3</answer>", "uses number not provided: 8"),
        ("<answer>6 / (4 - 4)</answer>", "uses number not provided: 4 (more often than given)"),
        ("<answer>-1 + 6 * 4</answer>", "disallowed syntax: USub"),
        ("<answer>6 * 4 ** 1</answer>", "disallowed syntax: Pow"),
        ("<answer>6 // 1 * 4</answer>", "disallowed syntax: FloorDiv"),
        ("<answer>__import__('os').system('ls')</answer>", "invalid characters: \"'._eilmoprsty\""),
        ("<answer>(6 * 4</answer>", "not a valid expression: SyntaxError"),
        ("<answer></answer>", "no expression"),
        ("", "no expression"),
    ],
)
def test_countdown(completion: str, reason: str | None) -> None:
    score = countdown.verify(CD, completion)
    assert score.correct is (reason is None) and score.reward == float(reason is None)
    assert score.info.get("reason") == reason


def test_countdown_wrong_value_and_division_by_zero() -> None:
    score = countdown.verify(CD, "<answer>6 * 4 - 3</answer>")
    assert score.correct is False and score.info == {"expr": "6 * 4 - 3", "value": "21"}
    doubled = _prompt("3", numbers=[3, 5, 5], target=3)
    assert countdown.verify(doubled, "<answer>3 / (5 - 5)</answer>").info["reason"] == "division by zero"


def test_countdown_huge_completions_are_fast() -> None:
    score, took = _timed(countdown.verify, CD, "<answer>" * 30_000 + HUGE_FILLER)  # unclosed tags everywhere
    assert score.correct is False and took < 2.0
    score, took = _timed(countdown.verify, CD, HUGE_FILLER + "<answer>(3 + 1) * 6</answer>")
    assert score.correct is True and took < 2.0
    score = countdown.verify(CD, "<answer>" + "(" * 5000 + "6" + ")" * 5000 + "</answer>")
    assert score.info["reason"] == f"expression longer than {countdown.MAX_EXPR_CHARS} chars"


def test_countdown_missing_meta_is_a_data_error() -> None:
    with pytest.raises(ValueError, match="meta numbers"):
        countdown.verify(_prompt("24"), "(3+1)*6")


# ---- registry and plug-ins --------------------------------------------------------------------------------------
def test_builtin_names_resolve_to_the_table() -> None:
    assert set(VERIFIERS) == {"math", "numeric", "exact", "countdown", "code"}
    for name, fn in VERIFIERS.items():
        assert load_verifier(name) is fn
    with pytest.raises(VerifierLoadError, match="unknown verifier 'maths'.*countdown"):
        load_verifier("maths")


@pytest.mark.parametrize(
    ("name", "completion", "expected"),
    [
        ("float_reward", "it is 42", Score(0.75, None)),
        ("float_reward", "no", Score(0.25, None)),
        ("int_reward", "42", Score(1.0, None)),
        ("bool_reward", " 42 ", Score(1.0, True)),
        ("bool_reward", "41", Score(0.0, False)),
        ("score_reward", "abc", Score(0.5, True, {"len": 3})),
        ("with_defaults", "42", Score(2.0, None)),
        ("scorer_instance", "42", Score(1.0, True)),
        ("Scorer.static", "", Score(0.125, None)),
    ],
)
def test_good_plugins_are_wrapped(name: str, completion: str, expected: Score) -> None:
    fn = load_verifier(f"{FIX}:{name}")
    assert fn(_prompt("42"), completion) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.unit.plugins_fixture", "must look like 'my_pkg.my_mod:my_fn'"),
        (f"{FIX}:", "must look like"),
        ("no_such_pkg_xyz.mod:fn", "cannot import module 'no_such_pkg_xyz.mod': No module named 'no_such_pkg_xyz'"),
        (f"{FIX}:missing", f"module '{FIX}' has no attribute 'missing'"),
        (f"{FIX}:Scorer.missing", "has no attribute 'Scorer.missing'"),
        (f"{FIX}:NOT_CALLABLE", "is a int, not a callable"),
        (f"{FIX}:one_arg", r"signature \(prompt: 'Prompt'\) .*must accept \(prompt, completion\)"),
        (f"{FIX}:three_required", "must accept"),
        (f"{FIX}:required_kwonly", "must accept"),
    ],
)
def test_bad_plugins_fail_at_load_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(VerifierLoadError, match=message) as info:
        load_plugin(spec)
    assert isinstance(info.value, ValueError)


def test_plugin_module_that_crashes_on_import(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "crashing_plugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VerifierLoadError, match="'crashing_plugin_mod' raised RuntimeError: boom at import"):
        load_verifier("crashing_plugin_mod:fn")


@pytest.mark.parametrize(("name", "error", "message"), [
    ("returns_str", TypeError, f"plug-in '{FIX}:returns_str' returned builtins.str"),
    ("returns_none", TypeError, "returned builtins.NoneType"),
    ("returns_nan", ValueError, "non-finite reward nan"),
])
def test_bad_plugin_return_values_raise(name: str, error: type[Exception], message: str) -> None:
    fn = load_verifier(f"{FIX}:{name}")
    with pytest.raises(error, match=message):
        fn(_prompt("42"), "42")
