"""`rlpt report RUN_DIR [--out FILE.html] [--watch SECONDS]`: one self-contained HTML page of a run.

What it holds: a summary (steps, reward, step time and its phases, tokens/s), the curves of `rlpt plot` as inline
SVG, the fault / fleet / sync / checkpoint events on a timeline and in a table, sample rollouts of recent steps
(per step the best, the worst and a random group: prompt, answer, completions, rewards, errors; filterable in the
page), every metric of every step in a filterable table, and the resolved config. No network: styles, script,
charts and data are inlined, so the file can be mailed or opened from a run directory copied off a cluster.

A run that is still training is read as far as it got; the page then says so and reloads itself every
`refresh_s` seconds, and `--watch` re-writes it until the run ends. Model output reaches the page only as JSON
data rendered with `textContent` (never as markup), so a completion cannot inject script into the report.
"""

from __future__ import annotations

import html
import io
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlpt.errors import UsageError
from rlpt.plots import PHASES, Run, figure, load_run
from rlpt.report_page import PAGE

SAMPLE_STEPS = 100  # the most recent steps whose sample groups go into the page (bounds its size on long runs)
MAX_TEXT = 4000  # characters of one prompt or completion kept in the page
EVENT_COUNTERS = {  # cumulative counter -> (kind, what one increase means)
    "faults/rollout_restarts": ("fault", "rollout engine replaced"),
    "faults/verifier_restarts": ("fault", "verifier actor replaced"),
    "fleet/joined": ("fleet", "engine joined"),
    "fleet/left": ("fleet", "engine left"),
}
EVENT_COLORS = {"fault": "#c44e52", "fleet": "#4c72b0", "sync": "#dd8452", "verifier": "#8172b3",
                "checkpoint": "#55a868"}
SAMPLE_COLUMNS = ("completion", "reward", "correct", "error", "finish_reason", "num_tokens", "policy_version",
                  "engine", "sample_index")


@dataclass(frozen=True)
class Event:
    step: int
    kind: str
    detail: str


def fmt(value: Any) -> str:
    """How a metric is shown: 6 significant digits (the page's test compares them to metrics.jsonl)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.6g}"


def events(rows: Sequence[dict[str, Any]]) -> list[Event]:
    """What happened at which step, from the metrics: replaced actors, engines joining and leaving, sync retries,
    verifier error rows, checkpoints."""
    out: list[Event] = []
    last: dict[str, float] = {}
    for r in rows:
        step = int(r["step"])
        for key, (kind, what) in EVENT_COUNTERS.items():
            value = r.get(key)
            if isinstance(value, (int, float)):
                grew = int(value - last.get(key, 0.0))
                if grew > 0:
                    out.append(Event(step, kind, what + (f" (x{grew})" if grew > 1 else "")))
                last[key] = value
        size = r.get("fleet/size")
        if isinstance(size, (int, float)):
            if "fleet/size" in last and size != last["fleet/size"]:
                out.append(Event(step, "fleet", f"fleet size {int(last['fleet/size'])} -> {int(size)}"))
            last["fleet/size"] = size
        if r.get("sync/retries"):
            out.append(Event(step, "sync", f"weight sync retried {int(r['sync/retries'])} time(s)"))
        if r.get("verifier/errors"):
            out.append(Event(step, "verifier", f"{int(r['verifier/errors'])} rollout(s) with a verifier error"))
        if isinstance(r.get("timing/checkpoint"), (int, float)):
            out.append(Event(step, "checkpoint", f"checkpoint written ({r['timing/checkpoint']:.2f}s)"))
    return out


def summary(rows: Sequence[dict[str, Any]], total: int | None) -> list[tuple[str, str, Any]]:
    """(label, metric key or '', value) rows of the summary table."""
    def med(key: str) -> float | None:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else None

    last = rows[-1]
    rewards = [float(r["reward/mean"]) for r in rows if isinstance(r.get("reward/mean"), (int, float))]
    out: list[tuple[str, str, Any]] = [
        ("steps logged", "", len(rows)), ("steps in the run", "", total),
        ("last reward/mean", "reward/mean", last.get("reward/mean")),
        ("mean reward/mean, last 10 steps", "", statistics.fmean(rewards[-10:]) if rewards else None),
        ("median step seconds", "timing/step", med("timing/step")),
    ]
    per_step = [p for p in PHASES if p not in ("eval", "checkpoint")]  # not per-step costs: counted apart
    out += [(f"median {p} seconds", f"timing/{p}", m) for p in per_step if (m := med(f"timing/{p}"))]
    out.append(("median tokens/s", "tokens/per_s", med("tokens/per_s")))
    evals = [r for r in rows if isinstance(r.get("timing/eval"), (int, float))]
    if evals:
        out.append(("evaluations", "", len(evals)))
        out.append(("median evaluation seconds", "timing/eval", med("timing/eval")))
        out += [(f"last {k}", k, evals[-1][k]) for k in sorted(evals[-1]) if k.startswith("eval/")
                and k not in ("eval/prompts", "eval/errors")]
    saves = [r for r in rows if isinstance(r.get("timing/checkpoint"), (int, float))]
    out.append(("checkpoints written", "", len(saves)))
    if saves:
        out.append(("median checkpoint seconds", "timing/checkpoint", med("timing/checkpoint")))
    return out


def sample_groups(run_dir: Path, steps: int = SAMPLE_STEPS, seed: int = 0) -> list[dict[str, Any]]:
    """Per recent step: its best, worst and a random group of rollouts (by the group's mean reward)."""
    import pyarrow.parquet as pq

    files = sorted((run_dir / "rollouts").glob("step_*.parquet"))[-steps:]
    out: list[dict[str, Any]] = []
    for file in files:
        rows = pq.read_table(file).to_pylist()
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(str(row["prompt_uid"]), []).append(row)
        if not groups:
            continue
        ranked = sorted(groups.values(), key=lambda g: statistics.fmean(float(s["reward"]) for s in g))
        picks = {"best": ranked[-1], "worst": ranked[0]}
        rest = ranked[1:-1]
        if rest:
            step = int(ranked[0][0]["step"])
            picks["random"] = random.Random(f"{seed}-{step}").choice(rest)
        for kind, group in picks.items():
            out.append(_group(kind, group))
    return out


def _group(kind: str, group: list[dict[str, Any]]) -> dict[str, Any]:
    head = group[0]
    samples = []
    for s in sorted(group, key=lambda s: s["sample_index"]):
        sample = {k: s.get(k) for k in SAMPLE_COLUMNS}
        sample["completion"] = _clip(transcript(s.get("turns")) or sample["completion"])
        # what the verifier said besides the reward (its Score.info: reward terms, the parsed answer, ...)
        sample["terms"] = json.loads(s["info"]) if s.get("info") else {}
        samples.append(sample)
    return {"kind": kind, "step": int(head["step"]), "prompt_uid": str(head["prompt_uid"]),
            "prompt": _clip(head["prompt"]), "answer": head.get("answer"),
            "mean_reward": statistics.fmean(float(s["reward"]) for s in group), "samples": samples}


def transcript(turns: list[dict[str, str]] | None) -> str | None:
    """A multi-turn sample's turns as one text, each turn headed by its role (rollout_log's `turns` column).

    >>> print(transcript([{"role": "assistant", "text": "8"}, {"role": "observation", "text": "Wrong."}]))
    [assistant] 8
    [observation] Wrong.
    >>> transcript(None) is None
    True
    """
    return "\n".join(f"[{t['role']}] {t['text']}" for t in turns) if turns else None


def _clip(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return text[:MAX_TEXT] + f" [... {len(text) - MAX_TEXT} more characters]"
    return text


def timeline_svg(evs: Sequence[Event], last_step: int) -> str:
    width, height, pad = 1000, 46, 12
    span = max(last_step, 1)
    marks = [f'<line x1="{pad}" y1="30" x2="{width - pad}" y2="30" stroke="#999"/>']
    for e in evs:
        x = pad + (width - 2 * pad) * e.step / span
        marks.append(f'<circle cx="{x:.1f}" cy="30" r="5" fill="{EVENT_COLORS.get(e.kind, "#333")}">'
                     f'<title>step {e.step}: {html.escape(e.detail)}</title></circle>')
    ticks = [f'<text x="{pad}" y="12" font-size="11">step 0</text>',
             f'<text x="{width - pad}" y="12" font-size="11" text-anchor="end">step {last_step}</text>']
    return (f'<svg id="timeline" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="events by step">{"".join(ticks + marks)}</svg>')


def _json_for_script(data: Any) -> str:
    """JSON that cannot end the <script> element holding it (a completion may contain '</script>')."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(run_dir: Path, refresh_s: int = 30) -> tuple[str, bool]:
    """The page, and whether the run is finished (every step of its config logged)."""
    run_dir = Path(run_dir)
    rows = load_run(run_dir)
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    total = _total_steps(run_dir)
    done = total is not None and len(rows) >= total
    fig, _, _ = figure([Run(run_dir.resolve().name, [int(r["step"]) for r in rows], rows)])
    buf = io.StringIO()
    from matplotlib import rc_context

    with rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable, selectable
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
    evs = events(rows)
    keys = sorted({k for r in rows for k in r} - {"step"})
    data = {"keys": keys, "metrics": [[int(r["step"])] + [r.get(k) for k in keys] for r in rows],
            "groups": sample_groups(run_dir)}
    summary_html = "".join(
        f'<tr><th class="text">{html.escape(label)}</th><td data-key="{html.escape(key)}" '
        f'data-label="{html.escape(label)}">{fmt(value)}</td></tr>' for label, key, value in summary(rows, total))
    events_html = "".join(f'<tr data-kind="{e.kind}"><td>{e.step}</td><td class="text">{e.kind}</td>'
                          f'<td class="text">{html.escape(e.detail)}</td></tr>' for e in evs) or \
        '<tr><td colspan="3" class="text muted">no faults, fleet changes, sync retries, verifier errors or ' \
        'checkpoints</td></tr>'
    legend = "".join(f'<span><span class="dot" style="background:{c}"></span> {k}</span>'
                     for k, c in EVENT_COLORS.items())
    banner = "" if done else (f"Run in progress: {len(rows)} of {total if total is not None else '?'} steps "
                              f"logged when this page was written; it reloads every {refresh_s}s (keep "
                              f"<code>rlpt report --watch</code> running to re-write it).")
    page = PAGE
    for name, value in {
        "TITLE": html.escape(f"rlpt report: {run_dir.resolve().name}"),
        "REFRESH": "" if done else f'<meta http-equiv="refresh" content="{refresh_s}">',
        "BANNER": f'<p class="banner" id="banner">{banner}</p>' if banner else "",
        "WRITTEN": html.escape(time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        "RUN_DIR": html.escape(str(run_dir.resolve())),
        "CHARTS": svg,
        "TIMELINE": timeline_svg(evs, int(rows[-1]["step"])),
        "SUMMARY": summary_html,
        "EVENTS": events_html,
        "EVENT_LEGEND": legend,
        "CONFIG": html.escape(config_text or "(no config.yaml in the run directory)"),
        "DATA": _json_for_script(data),
    }.items():
        page = page.replace(f"@@{name}@@", value)
    return page, done


def _total_steps(run_dir: Path) -> int | None:
    """Rows the run will write, from its config.yaml (None when there is none or it does not load)."""
    if not (run_dir / "config.yaml").is_file():
        return None
    from rlpt.config import load_config
    from rlpt.errors import SetupError
    from rlpt.loops.common import total_steps

    try:
        return total_steps(load_config(run_dir / "config.yaml"))
    except SetupError:
        return None


def write_report(run_dir: Path, out: Path | None = None, refresh_s: int = 30) -> tuple[Path, bool]:
    """Write the page atomically (a browser reloading it never reads half a file); return (path, finished)."""
    if not Path(run_dir).is_dir():
        raise UsageError(f"rlpt report: {run_dir} is not a directory")
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    page, done = render(Path(run_dir), refresh_s)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out, done
