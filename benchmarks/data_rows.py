"""Reading a large prompt file with bounded memory: a GSM8K-shaped file of N rows (default 1,000,000) as parquet
and as JSONL, each read, checked, answer-extracted (`#### N` regex) and measured against the prompt budget with a
real tokenizer in a fresh process; prints peak RSS (over the interpreter with torch/transformers imported) and
seconds, and writes the table to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/data_rows.py [--rows 1000000] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from rlpt.config import load_config
from rlpt.data import load_prompts, tokenize_prompts
from rlpt.models.tiny import train_tokenizer
tok = train_tokenizer(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
cfg = load_config(None, ["data.task=null", f"data.path={sys.argv[1]}", "data.columns.prompt=question",
                         "data.answer.extract=regex", "data.answer.regex='####\\s*(.+)$'"])
prompts = load_prompts(cfg.data, 0)
read_s = time.perf_counter() - t
res = tokenize_prompts(prompts, tok, cfg.data, budget=int(sys.argv[2]))
total_s = time.perf_counter() - t
last = res[len(res) - 1]
print(json.dumps({"rows": len(prompts), "kept": len(res), "read_s": read_s, "total_s": total_s,
                  "base_rss_mb": base / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "last_answer": last.answer}))
"""


def write_files(rows: int, out: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    q = [f"A shop sells {i % 97} pens and {i % 13} more. How many pens? Think step by step." for i in range(rows)]
    a = [f"It sells {i % 97} + {i % 13} = {i % 97 + i % 13} pens.\n#### {i % 97 + i % 13}" for i in range(rows)]
    table = pa.table({"question": q, "answer": a})
    pq.write_table(table, out / "gsm8k_like.parquet")
    with (out / "gsm8k_like.jsonl").open("w") as f:
        for qq, aa in zip(q, a):
            f.write(json.dumps({"question": qq, "answer": aa}) + "\n")
    return {"parquet": out / "gsm8k_like.parquet", "jsonl": out / "gsm8k_like.jsonl"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(args.rows, Path(tmp))
        for kind, path in files.items():
            res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.budget), str(ROOT)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r.update(format=kind, file_mb=path.stat().st_size / 2**20)
            results.append(r)
            print(json.dumps(r), flush=True)
    lines = ["| format | rows | file MB | read + check s | + measure all s | RSS before MB | peak RSS MB | extra MB/1k rows |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        extra = (r["peak_rss_mb"] - r["base_rss_mb"]) / max(r["rows"], 1) * 1000
        lines.append(f"| {r['format']} | {r['rows']} | {r['file_mb']:.0f} | {r['read_s']:.1f} | {r['total_s']:.1f} | "
                     f"{r['base_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {extra:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.rows >= 100_000:  # the smoke run of the test suite does not overwrite the committed figures
        section = (f"## Large prompt files (bounded memory)\n\nCommand: `.venv/bin/python benchmarks/data_rows.py "
                   f"--rows {args.rows}` ({time.strftime('%Y-%m-%d')}, this machine kind: 2 cores)\n\n{table}\n")
        write_section(Path(args.out), "## Large prompt files", section)


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_USAGE_STATS_ENABLED": "0"}


def offline_env() -> None:
    """What `make test` exports, for a benchmark started by hand (values already set win)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def write_results(out: Path, heading: str, cmd: str, note: str, text: str) -> None:
    """The section `heading` of RESULTS.md: the exact command, today's date, what the figures are, the table."""
    write_section(out, heading, f"{heading}\n\n`{cmd}` ({time.strftime('%Y-%m-%d')}; {note})\n\n{text}\n")


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the section that starts with `heading` in RESULTS.md."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nFigures measured on this machine kind.\n"
    parts = text.split("\n## ")
    kept = [p for p in parts if not ("## " + p).startswith(heading)]
    path.write_text("\n## ".join(kept).rstrip() + "\n\n" + section)


if __name__ == "__main__":
    main()
