"""Prompt datasets from parquet and JSON-lines files, in the shapes HF datasets export them, read with pyarrow.

- The prompt column holds a string, or a chat: a list of {role, content} messages (`messages`, or TRL's
  conversational `prompt`), with or without a system turn.
- Nested fields are dotted paths (`columns.prompt: question.text` reads field `text` of struct / object column
  `question`).
- The answer is the column as it is, the last `\\boxed{...}` of a full solution (MATH), or group 1 of a regex
  (GSM8K's `#### 72`), per `data.answer`.
- The file is read once into Arrow (compact, columnar) and every column is checked up front; a `Prompt` is made
  only when the loop draws its row, so a file of a million rows costs about its own size in memory.

Every problem names the file, the 1-based line (JSONL) or row (parquet) and the column, the same way everywhere:
`data.jsonl:4: column 'answer': ...`, `data.parquet: row 4: column 'answer': ...`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from rlpt.config import AnswerConfig, ColumnMap
from rlpt.data.lazy import LazyPrompts
from rlpt.errors import SetupError
from rlpt.types import Prompt


class DataError(SetupError):
    """Bad or missing prompt data; the message names the file, the 1-based line or row, and the column."""


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


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The file as an Arrow table (parquet: only the top-level columns `columns` need, when given)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            names = pq.read_schema(p).names
            top = None if columns is None else [n for n in names if n in {c.split(".")[0] for c in columns}]
            return pq.read_table(p, columns=top)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{p}: not a readable parquet file: {e}") from None
    if suffix in (".jsonl", ".json"):
        if p.stat().st_size == 0:
            raise DataError(f"{p}: dataset is empty (0 rows)")
        return _read_jsonl(p)
    raise DataError(f"{p}: unsupported dataset format '{suffix}' (use .parquet or .jsonl)")


def _with_nested(table: pa.Table, wanted: Sequence[str]) -> pa.Table:
    """Flatten struct columns until every dotted name in `wanted` is a column (or nothing is left to flatten)."""
    while any(c not in table.column_names for c in wanted) and any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table


BOXED = re.compile(r"\\boxed\s*\{")


def last_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` (balanced braces), or None.

    >>> last_boxed(r"so $x = \boxed{\frac{1}{2}}$, and then \boxed{72}.")
    '72'
    >>> last_boxed(r"\boxed{\frac{a}{b}}"), last_boxed("no box")
    ('\\frac{a}{b}', None)
    """
    starts = [m.end() for m in BOXED.finditer(text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


class PromptFile(LazyPrompts):
    """The rows of one prompt file as Prompts, made when accessed; every column is checked when the file is read."""

    def __init__(self, path: str | Path, columns: ColumnMap, answer: AnswerConfig | None = None) -> None:
        self.path, self.columns, self.answer = Path(path), columns, answer or AnswerConfig()
        self.jsonl = self.path.suffix.lower() != ".parquet"
        wanted = [c for c in (columns.prompt, columns.answer, columns.id, *columns.meta) if c is not None]
        table = _with_nested(read_table(self.path, wanted), wanted)
        if table.num_rows == 0:
            raise DataError(f"{self.path}: dataset is empty (0 rows)")
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise DataError(f"{self.path}: missing column(s) {missing}; the file has {table.column_names} "
                            "(map yours with data.columns.prompt / .answer / .meta / .id; nested fields as a.b)")
        self.cols = {c: table.column(c) for c in wanted}
        self.regex = re.compile(self.answer.regex, re.MULTILINE) if self.answer.regex else None
        self._line_of: list[int] | None = None
        self._check()

    # ---------------------------------------------------------------------------------------- errors
    def where(self, row: int, column: str) -> str:
        """`file:LINE: column 'c'` (JSONL, 1-based line) or `file: row N: column 'c'` (parquet, 1-based)."""
        if not self.jsonl:
            return f"{self.path}: row {row + 1}: column '{column}'"
        if self._line_of is None:  # blank lines are no rows: count the lines once, only when there is an error
            with self.path.open(encoding="utf-8", errors="replace") as f:
                self._line_of = [n for n, line in enumerate(f, start=1) if line.strip()]
        return f"{self.path}:{self._line_of[row]}: column '{column}'"

    def _check(self) -> None:
        """Every row parses, column by column, a chunk at a time (nothing is kept but the id set)."""
        c = self.columns
        for row, value in self._values(c.prompt):
            self._prompt(value, row)
        if c.answer is not None:
            for row, value in self._values(c.answer):
                self._answer(value, row)
        if c.id is not None:
            seen: set[str] = set()
            for row, value in self._values(c.id):
                if str(value) in seen:
                    raise DataError(f"{self.where(row, c.id)}: duplicate id {str(value)!r}")
                seen.add(str(value))

    def _values(self, column: str, block: int = 65536) -> Iterator[tuple[int, Any]]:
        """(row, value) pairs, converted to Python a block at a time (an Arrow chunk may hold the whole file)."""
        row = 0
        for chunk in self.cols[column].chunks:
            for start in range(0, len(chunk), block):
                for value in chunk.slice(start, block).to_pylist():
                    yield row, value
                    row += 1

    # ---------------------------------------------------------------------------------------- one row
    def _prompt(self, value: Any, row: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        """(text, chat turns): a string prompt has no turns; a chat's text is its last turn."""
        if isinstance(value, str):
            if not value.strip():
                raise DataError(f"{self.where(row, self.columns.prompt)}: prompt must be a non-empty string, got "
                                f"{value!r}")
            return value, ()
        if isinstance(value, list) and value and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value):
            turns = tuple((m["role"], m["content"]) for m in value)
            return turns[-1][1], turns
        raise DataError(f"{self.where(row, self.columns.prompt)}: prompt must be a non-empty string or a list of "
                        f"{{role, content}} messages, got {str(value)[:200]!r}")

    def _answer(self, value: Any, row: int) -> str:
        where = self.answer_where(row)
        if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
            raise DataError(f"{where}: answer must be a string or a number, got {value!r}")
        text = value if isinstance(value, str) else str(value)
        if self.answer.extract == "boxed":
            got = last_boxed(text)
            if got is None:
                raise DataError(f"{where}: no \\boxed{{...}} in the answer (data.answer.extract: boxed): "
                                f"{text[-200:]!r}")
            return got
        if self.regex is not None:
            m = self.regex.search(text)
            if m is None or m.group(1) is None:
                raise DataError(f"{where}: data.answer.regex {self.regex.pattern!r} does not match: {text[-200:]!r}")
            return m.group(1).strip()
        return text

    def answer_where(self, row: int) -> str:
        assert self.columns.answer is not None
        return self.where(row, self.columns.answer)

    def __len__(self) -> int:
        return len(self.cols[self.columns.prompt])

    def make(self, i: int) -> Prompt:
        c = self.columns
        text, turns = self._prompt(self.cols[c.prompt][i].as_py(), i)
        answer = None if c.answer is None else self._answer(self.cols[c.answer][i].as_py(), i)
        uid = f"{self.path.stem}-{i}" if c.id is None else str(self.cols[c.id][i].as_py())
        return Prompt(uid=uid, text=text, answer=answer, meta={m: self.cols[m][i].as_py() for m in c.meta},
                      messages=turns)


def read_prompts(path: str | Path, columns: ColumnMap, answer: AnswerConfig | None = None) -> PromptFile:
    """A dataset as Prompts (see the module docstring); every row is checked here."""
    return PromptFile(path, columns, answer)
