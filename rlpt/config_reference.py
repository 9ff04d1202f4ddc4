"""The configuration reference (docs/config.md), generated from the schema in rlpt/config.py: every key with its
type, default and description, and the recipe files under configs/ that set it. `rlpt config reference --out
docs/config.md` writes it; tests/unit/test_config_reference.py fails when the committed file is stale, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml
from pydantic import BaseModel

from rlpt.config import RlptConfig, parse_yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs"


@dataclass(frozen=True)
class Key:
    path: str  # dotted, e.g. "rollout.max_new_tokens"
    type: str
    default: str
    description: str


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_name(annotation: Any) -> str:
    """A short, YAML-minded spelling of a field's type: `"a" | "b"` for a choice, `list[str]`, `int or null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(named) + (" | null" if type(None) in args else "")
    if origin is tuple:
        return f"list[{type_name(args[0])}]" if len(args) == 2 and args[1] is Ellipsis else \
            "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def default_text(value: Any) -> str:
    """The default as it would be written in a YAML config."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def item_sections(annotation: Any) -> list[type[BaseModel]]:
    """The section types a list key holds (reward.terms: RuleTerm | ModelTerm | JudgeTerm), else []."""
    args = typing.get_args(annotation)
    while args and typing.get_origin(annotation) in (typing.Annotated, tuple):
        annotation, args = args[0], typing.get_args(args[0])
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return [m for m in members if _is_section(m)]


def sections(model: type[BaseModel] = RlptConfig, prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """(dotted path, section model) of every section, depth first in schema order; the entries of a list of
    sections as `path[]` with their kind (`reward.terms[] (kind: model)`)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if _is_section(field.annotation):
            yield path, field.annotation
            yield from sections(field.annotation, f"{path}.")
        for item in item_sections(field.annotation):
            yield f"{path}[] (kind: {item.model_fields['kind'].default})", item


def keys(model: type[BaseModel], prefix: str) -> list[Key]:
    """The leaf keys of one section (not those of its subsections)."""
    out = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            continue
        default = field.default_factory() if field.default_factory is not None else field.default
        out.append(Key(f"{prefix}{name}", type_name(field.annotation),
                       "(required)" if field.is_required() else default_text(default),
                       " ".join((field.description or "").split())))
    return out


def all_keys() -> set[str]:
    return {k.path for path, model in sections() if "[]" not in path for k in keys(model, f"{path}.")}


def recipe_keys(recipes: Path = RECIPES) -> dict[str, list[str]]:
    """Which recipe files set each key: dotted key -> recipe paths relative to `recipes`, sorted."""
    leaves = all_keys()
    found: dict[str, list[str]] = {}

    def walk(tree: Any, prefix: str, recipe: str) -> None:
        for name, value in tree.items():
            path = f"{prefix}{name}"
            if isinstance(value, dict) and path not in leaves:
                walk(value, f"{path}.", recipe)
            else:
                found.setdefault(path, []).append(recipe)

    for file in sorted(recipes.rglob("*.yaml")):
        tree = parse_yaml(file.read_text(encoding="utf-8"), str(file)) or {}
        walk(tree, "", file.relative_to(recipes).as_posix())
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(recipes: Path = RECIPES) -> str:
    """docs/config.md."""
    used = recipe_keys(recipes)
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `rlpt config reference --out docs/config.md` from rlpt/config.py: do not edit by hand "
        "(tests/unit/test_config_reference.py fails when it is stale) -->",
        "",
        "A run is configured by a YAML file of these sections and `key.path=value` overrides on the command line "
        "(`rlpt train configs/grpo/arith_tiny.yaml rollout.max_new_tokens=8`). Every key is optional; an unknown "
        "key or a value of the wrong type stops the run before it starts, naming the key. `rlpt config show "
        "[CONFIG] [overrides]` prints the resolved config, `rlpt config schema` its JSON schema. The last column "
        "names the recipes under `configs/` that set a key.",
        "",
    ]
    for path, model in sections():
        depth = path.count(".") + 2 + ("[]" in path)
        lines += [f"{'#' * depth} `{path}`", ""]
        doc = inspect.getdoc(model) if vars(model).get("__doc__") else None  # its own docstring, not BaseModel's
        for paragraph in (doc.split("\n\n") if doc else []):
            lines += [" ".join(paragraph.split()), ""]
        rows = keys(model, f"{path.split(' ')[0]}.")
        if not rows:
            continue
        lines += ["| key | type | default | description | set in |", "|---|---|---|---|---|"]
        for k in rows:
            where = ", ".join(f"`{r}`" for r in used.get(k.path, []))
            lines.append(f"| `{k.path}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.description)} | "
                         f"{where} |")
        lines.append("")
    unknown = sorted(set(used) - all_keys())
    if unknown:  # a recipe with a key the schema lacks would fail at load: say so here too
        raise ValueError(f"recipes set keys the schema does not have: {unknown}")
    return "\n".join(lines)
