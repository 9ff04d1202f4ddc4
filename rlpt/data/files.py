"""Prompt datasets from parquet and JSON-lines files, read with pyarrow, with a column mapping.

Every problem names the file, and where it applies the row (0-based, = line - 1 for JSONL) and the column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from rlpt.config import ColumnMap
from rlpt.types import Prompt


class DataError(ValueError):
    """Bad or missing prompt data; the message names the file, row and column."""


def _read_jsonl(path: Path) -> pa.Table:
    try:
        return pa_json.read_json(path)
    except pa.ArrowInvalid as e:
        _explain_jsonl_error(path)
        raise DataError(f"{path}: could not read as JSON lines: {e}") from None


def _json_kind(value: Any) -> str:
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def _explain_jsonl_error(path: Path) -> None:
    """pyarrow's messages give block-relative rows; find the first bad line (and column) ourselves and raise."""
    kinds: dict[str, tuple[str, int]] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as je:
                raise DataError(f"{path}:{lineno}: not valid JSON ({je.msg} at column {je.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(value).__name__}")
            for key, v in value.items():
                if v is None:
                    continue
                first = kinds.setdefault(key, (_json_kind(v), lineno))
                if first[0] != _json_kind(v):
                    raise DataError(f"{path}:{lineno}: column '{key}' is a {_json_kind(v)} here but a {first[0]} on "
                                    f"line {first[1]}; use one type per column (e.g. quote every answer)")


def read_table(path: str | Path) -> pa.Table:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            return pq.read_table(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{p}: not a readable parquet file: {e}") from None
    if suffix in (".jsonl", ".json"):
        if p.stat().st_size == 0:
            raise DataError(f"{p}: dataset is empty (0 rows)")
        return _read_jsonl(p)
    raise DataError(f"{p}: unsupported dataset format '{suffix}' (use .parquet or .jsonl)")


def _answer_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: answer must be a string or a number, got {value!r}")
    return value if isinstance(value, str) else str(value)


def read_prompts(path: str | Path, columns: ColumnMap) -> list[Prompt]:
    """Read a dataset into Prompts. `columns.prompt` must hold non-empty strings; `columns.answer` strings or
    numbers; each `columns.meta` column goes into `Prompt.meta` under its own name."""
    table = read_table(path)
    if table.num_rows == 0:
        raise DataError(f"{path}: dataset is empty (0 rows)")
    wanted = [c for c in (columns.prompt, columns.answer, columns.id, *columns.meta) if c is not None]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {table.column_names} "
                        "(map yours with data.columns.prompt / .answer / .meta / .id)")
    cols = {c: table.column(c).to_pylist() for c in wanted}
    prompts, seen = [], set()
    stem = Path(path).stem
    for row in range(table.num_rows):
        text = cols[columns.prompt][row]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {row}, column '{columns.prompt}': prompt must be a non-empty string, "
                            f"got {text!r}")
        answer = None
        if columns.answer is not None:
            answer = _answer_text(cols[columns.answer][row], f"{path}: row {row}, column '{columns.answer}'")
        uid = f"{stem}-{row}" if columns.id is None else str(cols[columns.id][row])
        if uid in seen:
            raise DataError(f"{path}: row {row}, column '{columns.id}': duplicate id {uid!r}")
        seen.add(uid)
        prompts.append(Prompt(uid=uid, text=text, answer=answer, meta={c: cols[c][row] for c in columns.meta}))
    return prompts
