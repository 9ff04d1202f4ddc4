"""Per-step rollout records (`rollouts/step_XXXXXX.parquet`): prompts, completions, rewards, errors, versions
(`policy_version` samples the first token, `newest_version` the last: they differ only with partial rollouts).

For audit, for counting (every prompt scored exactly once), and as RFT/DPO data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from rlpt.types import ScoredRollout

SCHEMA = pa.schema([
    ("step", pa.int64()), ("prompt_uid", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
    ("sample_index", pa.int32()), ("completion", pa.string()), ("num_tokens", pa.int32()),
    ("finish_reason", pa.string()), ("reward", pa.float64()), ("correct", pa.bool_()), ("error", pa.string()),
    ("policy_version", pa.int64()), ("engine", pa.string()),
    ("info", pa.string()),  # the verifier's details (its Score.info: parsed answer, reward terms) as JSON
    # The learner version the step trained at (so learner_version - policy_version is the sample's staleness) and
    # whether the sample was in the trained batch (dynamic sampling and stale drops leave samples out); null in
    # the round loops' files.
    ("learner_version", pa.int64()), ("trained", pa.bool_()),
    ("newest_version", pa.int64()),  # the version of the last token (partial rollouts; else policy_version)
    ("reward_terms", pa.map_(pa.string(), pa.float64())),  # each reward term's value (reward.terms; else null)
    # A multi-turn trajectory turn by turn (role "assistant": a model turn, "observation": the environment's);
    # null for single-turn samples. `completion` is then the final model turn (what a verifier reads), and `info`
    # holds how the trajectory ended (info["trajectory"]) and its last step's info.
    ("turns", pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())]))),
])


def info_json(info: Mapping[str, Any]) -> str | None:
    """A verifier's `info` as JSON (values JSON cannot hold are written as their str), None when empty.

    >>> info_json({"pred": 42.0, "format": 1}), info_json({})
    ('{"format": 1, "pred": 42.0}', None)
    """
    return json.dumps(dict(info), default=str, sort_keys=True) if info else None


def split_turns(info: Mapping[str, Any]) -> tuple[list[dict[str, str]] | None, Mapping[str, Any]]:
    """(the `turns` column, the info without them) of a sample: the turns leave info["trajectory"] for their column.

    >>> split_turns({"trajectory": {"turns": [["assistant", "8"], ["observation", "No"]], "end": "done"}, "x": 1})
    ([{'role': 'assistant', 'text': '8'}, {'role': 'observation', 'text': 'No'}], {'trajectory': {'end': 'done'}, 'x': 1})
    >>> split_turns({"pred": 7.0})
    (None, {'pred': 7.0})
    """
    traj = info.get("trajectory")
    if not isinstance(traj, Mapping) or "turns" not in traj:
        return None, info
    turns = [{"role": role, "text": text} for role, text in traj["turns"]]
    return turns, {**info, "trajectory": {k: v for k, v in traj.items() if k != "turns"}}


def rollout_table(step: int, scored: Sequence[ScoredRollout], learner_version: int | None = None,
                  trained: Sequence[bool] | None = None) -> pa.Table:
    marks: Sequence[bool | None] = [None] * len(scored) if trained is None else trained
    split = [split_turns(s.info) for s in scored]
    rows = [
        {
            "step": step, "prompt_uid": s.rollout.prompt.uid, "prompt": s.rollout.prompt.text,
            "answer": s.rollout.prompt.answer, "sample_index": s.rollout.sample_index, "completion": s.rollout.text,
            "num_tokens": len(s.rollout.response_ids_T), "finish_reason": s.rollout.finish_reason,
            "reward": s.reward, "correct": s.correct, "error": s.error, "policy_version": s.rollout.policy_version,
            "engine": s.rollout.engine, "info": info_json(info), "learner_version": learner_version,
            "trained": t, "newest_version": s.rollout.newest_version,
            "reward_terms": list(s.terms.items()) if s.terms else None, "turns": turns,
        }
        for s, t, (turns, info) in zip(scored, marks, split)
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_rollouts(run_dir: Path, step: int, scored: Sequence[ScoredRollout], learner_version: int | None = None,
                   trained: Sequence[bool] | None = None) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written step file."""
    out_dir = run_dir / "rollouts"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"step_{step:06d}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(rollout_table(step, scored, learner_version, trained), tmp)
    os.replace(tmp, path)
    return path


def read_rollouts(run_dir: Path) -> pa.Table:
    files = sorted((run_dir / "rollouts").glob("step_*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    # files written before a column existed get it as nulls (a run resumed across an upgrade)
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    return table.select([n for n in SCHEMA.names if n in table.column_names]
                        + [n for n in table.column_names if n not in SCHEMA.names])
