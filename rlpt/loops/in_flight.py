"""The samples of a step generated ahead of the learner (asynchronous loop, rollout.max_staleness >= 1) and how a
checkpoint holds them: `loop_state.json` keeps every finished step the learner has not trained yet, with each
sample's policy version, so a resumed run trains on exactly the samples the uninterrupted run would have.

A sample is written field by field (JSON floats round-trip exactly); its prompt is written as its uid and found
again in the run's prompts on resume (uids are stable: dataset name + row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from rlpt.types import Prompt, Rollout, ScoredRollout, TrainBatch


@dataclass
class StepSamples:
    """What the producer made for one step: the groups kept for training, every scored sample (the rollouts
    file), the cursor just after this step's prompts, the producer's seconds per phase (its own timer), and the
    batch built from `kept` with its reference logprobs (`built`: None is then "nothing to train"; a step read
    back from a checkpoint is rebuilt by the learner)."""

    step: int
    kept: list[ScoredRollout]
    seen: list[ScoredRollout]
    cursor: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    batch: TrainBatch | None = None
    built: bool = False


def sample_to_json(s: ScoredRollout) -> dict[str, Any]:
    r = s.rollout
    return {"uid": r.prompt.uid, "i": r.sample_index, "ids": list(r.response_ids_T), "lp": list(r.logprobs_T),
            "text": r.text, "finish": r.finish_reason, "v": r.policy_version, "engine": r.engine,
            "reward": s.reward, "correct": s.correct, "info": dict(s.info), "error": s.error,
            "versions": list(r.versions_T), "terms": dict(s.terms), "mask": list(r.loss_mask_T)}


def sample_from_json(d: Mapping[str, Any], prompts: Mapping[str, Prompt]) -> ScoredRollout:
    if d["uid"] not in prompts:
        raise ValueError(f"a checkpointed in-flight sample is of prompt {d['uid']!r}, which the run's data no longer "
                         f"has (did the dataset change?)")
    r = Rollout(prompts[d["uid"]], int(d["i"]), tuple(int(t) for t in d["ids"]), tuple(float(x) for x in d["lp"]),
                str(d["text"]), str(d["finish"]), int(d["v"]), str(d["engine"]),
                tuple(int(v) for v in d.get("versions", ())), tuple(int(m) for m in d.get("mask", ())))
    return ScoredRollout(r, float(d["reward"]), d["correct"], dict(d["info"]), d["error"],
                         {str(k): float(v) for k, v in d.get("terms", {}).items()})


def to_json(samples: StepSamples) -> dict[str, Any]:
    kept = {id(s) for s in samples.kept}
    return {"step": samples.step, "cursor": samples.cursor,
            "seen": [sample_to_json(s) for s in samples.seen], "kept": [id(s) in kept for s in samples.seen]}


def from_json(d: Mapping[str, Any], prompts: Sequence[Prompt]) -> StepSamples:
    by_uid = {p.uid: p for p in prompts}
    seen = [sample_from_json(x, by_uid) for x in d["seen"]]
    kept = [s for s, k in zip(seen, d["kept"]) if k]
    return StepSamples(int(d["step"]), kept, seen, dict(d["cursor"]))
