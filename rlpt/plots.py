"""`rlpt plot RUN_DIR [RUN_DIR ...]`: one PNG with the panels a user checks first, several runs overlaid.

Panels (each from `metrics.jsonl`; a panel whose metrics no run has says so instead of staying blank):
reward and accuracy (raw, faint, and smoothed), response length and truncation, the median step time split by
phase (one stacked bar per run), generated tokens/s, the engine-vs-learner logprob gap, KL and clip fraction,
staleness and the off-policy metrics (`off_policy/*`, from asynchronous runs), and evaluation scores (`eval/*`).

matplotlib is driven through its object API with the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rlpt.errors import UsageError
from rlpt.metrics import read_metrics

PHASES = ("rollout", "verify", "reference", "train", "sync", "eval", "checkpoint")  # timing/<phase>, step order
EVAL_COUNTS = ("eval/prompts", "eval/errors", "eval/tokens_per_s")  # not scores: kept off the evaluation panel
SMOOTH_FRACTION = 0.04  # moving-average window: 4% of the run's steps (at least 1)


@dataclass(frozen=True)
class Run:
    label: str
    steps: list[int]
    rows: list[dict[str, Any]]  # one per step (a step logged twice, e.g. around a resume: the last row wins)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the rows that have a finite `key`."""
        pairs = [(s, float(r[key])) for s, r in zip(self.steps, self.rows)
                 if isinstance(r.get(key), (int, float)) and float(r[key]) == float(r[key])]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def has(self, key: str) -> bool:
        return bool(self.series(key)[0])

    def keys(self, prefix: str) -> list[str]:
        return sorted({k for r in self.rows for k in r if k.startswith(prefix)})


@dataclass(frozen=True)
class PlotResult:
    path: Path
    panels: dict[str, tuple[int, int, int, int]]  # panel title -> pixel box (left, top, right, bottom) in the PNG
    empty: tuple[str, ...]  # panels that had no data in any run


def load_run(run_dir: Path) -> list[dict[str, Any]]:
    """One row per step (a run that is still training is read as far as it got)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"{run_dir}: no metrics.jsonl (not a run directory, or the run has not finished a step)")
    by_step = {int(r["step"]): r for r in read_metrics(path, live=True)}  # type: ignore[call-overload]
    if not by_step:
        raise UsageError(f"{path}: no steps logged yet")
    return [by_step[s] for s in sorted(by_step)]


def load_runs(run_dirs: Sequence[Path]) -> list[Run]:
    if not run_dirs:
        raise UsageError("rlpt plot: give at least one RUN_DIR")
    runs = []
    for run_dir, label in zip(run_dirs, labels_for(run_dirs)):
        rows = load_run(Path(run_dir))
        runs.append(Run(label, [int(r["step"]) for r in rows], rows))
    return runs


def labels_for(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name; parent/name where two runs share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [f"{Path(d).resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is).

    >>> smooth([1.0, 2.0, 3.0, 4.0], 2)
    [1.0, 1.5, 2.5, 3.5]
    """
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _line(ax: Any, run: Run, color: str, key: str, smoothed: bool, label: bool, **style: Any) -> bool:
    x, y = run.series(key)
    if not x:
        return False
    if smoothed:
        ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
        y = smooth(y, max(1, round(len(y) * SMOOTH_FRACTION)))
    ax.plot(x, y, color=color, label=run.label if label else None, linewidth=1.5, **style)
    return True


def _lines(keys: Sequence[tuple[str, dict[str, Any]]], smoothed: bool = False) -> Callable[[Any, list[Run],
                                                                                            list[str]], bool]:
    """A panel of one line per run and key (style per key: the second key dashed, and so on)."""
    def draw(ax: Any, runs: list[Run], colors: list[str]) -> bool:
        drawn = False
        for run, color in zip(runs, colors):
            labelled = False  # one legend entry per run; the panel's title says what each line style is
            for key, style in keys:
                if _line(ax, run, color, key, smoothed, not labelled, **style):
                    drawn = labelled = True
        return drawn
    return draw


def _phases(ax: Any, runs: list[Run], colors: list[str]) -> bool:
    """One stacked bar per run: each phase's median seconds per step (a step without the phase counts 0, so a
    final checkpoint does not look like a per-step cost), and the rest of the median step on top."""
    import statistics

    cmap = ["#4c72b0", "#dd8452", "#937860", "#55a868", "#c44e52", "#da8bc3", "#8172b3", "#bbbbbb"]
    drawn, top = False, 0.0
    for i, run in enumerate(runs):
        if not run.has("timing/step"):
            continue
        bottom = 0.0
        for j, phase in enumerate(PHASES):
            if run.has(f"timing/{phase}"):
                per_step = [float(r.get(f"timing/{phase}") or 0.0) for r in run.rows]
                height = statistics.median(per_step)
                ax.bar(i, height, bottom=bottom, color=cmap[j], label=phase if not drawn else None)
                bottom += height
        rest = max(statistics.median(run.series("timing/step")[1]) - bottom, 0.0)
        ax.bar(i, rest, bottom=bottom, color=cmap[-1], label="other" if not drawn else None)
        drawn, top = True, max(top, bottom + rest)
    ax.set_xticks(range(len(runs)), [r.label for r in runs], rotation=15, fontsize=7)
    ax.set_xlim(-0.6, len(runs) + 0.6)  # room on the right for the legend
    ax.set_ylim(0, top * 1.05 or 1.0)
    return drawn


def _off_policy(ax: Any, runs: list[Run], colors: list[str]) -> bool:
    extra = sorted({k for r in runs for k in r.keys("off_policy/")})
    keys = [("staleness/mean", {})] + [(k, {"linestyle": ":"}) for k in extra]
    return _lines(keys)(ax, runs, colors)


def _evaluation(ax: Any, runs: list[Run], colors: list[str]) -> bool:
    drawn = False
    for run, color in zip(runs, colors):
        for n, key in enumerate(k for k in run.keys("eval/") if k not in EVAL_COUNTS):
            x, y = run.series(key)
            if x:
                ax.plot(x, y, color=color, marker="o", markersize=3, linestyle=["-", "--", ":", "-."][n % 4],
                        label=f"{run.label} {key.removeprefix('eval/')}")
                drawn = True
    return drawn


# title -> (what it draws, y label); every panel draws every run in the run's color
PANELS: dict[str, tuple[Callable[[Any, list[Run], list[str]], bool], str]] = {
    "reward (raw and smoothed)": (_lines([("reward/mean", {})], smoothed=True), "reward/mean"),
    "accuracy (raw and smoothed)": (_lines([("reward/correct_frac", {})], smoothed=True), "reward/correct_frac"),
    "response length; truncated (dashed)": (
        _lines([("response/len_mean", {}), ("response/truncated_frac", {"linestyle": "--"})]),
        "tokens / fraction"),
    "step time by phase": (_phases, "seconds"),
    "generated tokens/s": (_lines([("tokens/per_s", {})], smoothed=True), "tokens/s"),
    "engine vs learner logprob gap; max (dashed)": (
        _lines([("logprob_gap/mean", {}), ("logprob_gap/max", {"linestyle": "--"})]), "|logprob difference|"),
    "KL; clip fraction (dashed)": (_lines([("actor/kl", {}), ("actor/clip_frac", {"linestyle": "--"})]),
                                   "KL / fraction"),
    "staleness; off-policy (dotted)": (_off_policy, "steps / weight"),
    "evaluation": (_evaluation, "score"),
}


def figure(runs: list[Run]) -> tuple[Any, dict[str, tuple[int, int, int, int]], tuple[str, ...]]:
    """The laid-out figure of every panel, each panel's pixel box (left, top, right, bottom) and the panels that
    had no data in any run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = [f"C{i % 10}" for i in range(len(runs))]
    fig = Figure(figsize=(16, 12), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3).ravel()
    empty = []
    for ax, (title, (draw, ylabel)) in zip(axes, PANELS.items()):
        ax.set_title(title, fontsize=10)
        if draw(ax, runs, colors):
            ax.set_ylabel(ylabel, fontsize=8)
            if title != "step time by phase":
                ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right" if title == "step time by phase" else "best")
        else:
            empty.append(title)
            ax.text(0.5, 0.5, "no such metrics in these runs", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("rlpt: " + ", ".join(r.label for r in runs), fontsize=12)
    canvas.draw()  # lays the figure out: the boxes below are those of a PNG saved at the same dpi
    height = int(fig.bbox.height)
    panels = {}
    for ax, title in zip(axes, PANELS):
        box = ax.get_window_extent()
        panels[title] = (int(box.x0), int(height - box.y1), int(box.x1), int(height - box.y0))
    return fig, panels, tuple(empty)


def plot_runs(run_dirs: Sequence[Path], out: Path) -> PlotResult:
    """Draw every panel for these runs into `out` (PNG)."""
    fig, panels, empty = figure(load_runs(run_dirs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return PlotResult(out, panels, empty)
