"""A run directory as rlpt writes it (config.yaml, metrics.jsonl, rollouts/*.parquet) with events and hostile
completions, for the report tests (tests/unit/test_report*.py)."""

import json
from pathlib import Path

from rlpt.config import load_config, save_config
from rlpt.rollout_log import SCHEMA

HOSTILE = '</script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
STEPS, P, G = 12, 4, 3


def make_run(run_dir: Path, steps_logged: int = STEPS, total_steps: int = STEPS) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    save_config(load_config(None, [f"run.steps={total_steps}"]), run_dir / "config.yaml")
    rows = []
    for s in range(steps_logged):
        r = {"step": s, "policy_version": s + 1, "reward/mean": 0.1 + 0.05 * s, "reward/correct_frac": 0.05 * s,
             "timing/step": 0.2 + 0.001 * s, "timing/rollout": 0.1, "timing/train": 0.05, "timing/sync": 0.02,
             "tokens/per_s": 4000.0 + s, "faults/rollout_restarts": 1.0 if s >= 5 else 0.0, "fleet/joined": 0.0,
             "fleet/left": 0.0, "fleet/size": 2.0 if s < 5 else 1.0, "sync/retries": 1.0 if s == 5 else 0.0,
             "verifier/errors": 2.0 if s == 7 else 0.0, "logprob_gap/mean": 1.25e-6 * (s + 1)}
        if s == steps_logged - 1:
            r["timing/checkpoint"] = 0.5
        if s % 4 == 3:  # run.eval_every=4
            r.update({"timing/eval": 0.3, "eval/prompts": 8.0, "eval/errors": 0.0, "eval/pass@1": 0.125 * (s // 4),
                      "eval/greedy_pass@1": 0.25})
        rows.append(r)
        table = []
        for p in range(P):
            for i in range(G):
                completion = HOSTILE if (s, p, i) == (steps_logged - 1, P - 1, 0) else f"{p}+{i}={p + i}"
                table.append({"step": s, "prompt_uid": f"u{p}", "prompt": f"{p}+{i}=", "answer": str(p + i),
                              "sample_index": i, "completion": completion, "num_tokens": 2, "finish_reason": "length",
                              "reward": float(p == P - 1) * (i + 1) / G if p else 0.0, "correct": p == P - 1,
                              "error": "timeout: verifier took > 10s" if (s, p, i) == (7, 1, 2) else None,
                              "policy_version": s, "engine": "rollout-0",
                              "info": json.dumps({"pred": p + i, "format": 1.0}) if p == P - 1 else None})
        (run_dir / "rollouts").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), run_dir / "rollouts" / f"step_{s:06d}.parquet")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
