"""docs/config.md is generated from the schema (rlpt/config_reference.py): it must be current, complete, and read
the recipes the way the loader does."""

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from rlpt.cli import main
from rlpt.config import load_config
from rlpt.config_reference import REPO, all_keys, default_text, recipe_keys, render, type_name

pytestmark = pytest.mark.unit

DOC = REPO / "docs" / "config.md"


def test_committed_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/config.md is stale: regenerate it with `rlpt config reference --out docs/config.md`")


def test_every_key_is_documented_with_a_description():
    text = DOC.read_text(encoding="utf-8")
    keys = all_keys()
    assert len(keys) > 100 and {"rollout.max_new_tokens", "cluster.rollout.autoscale", "sync.probe_every"} <= keys
    for key in keys:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{key} missing from docs/config.md"
        description = row.split(" | ")[3]
        assert description.strip(), f"{key} has no description"


def test_defaults_in_the_reference_are_the_loaded_defaults():
    cfg = load_config(None, [])
    text = DOC.read_text(encoding="utf-8")
    for key, want in [("rollout.samples_per_prompt", "16"), ("learner.betas", "[0.9, 0.999]"),
                      ("model.path", "null"), ("sync.probe_every", "10"), ("cluster.engine_resources", "{}")]:
        assert f"| `{key}` |" in text and f"| `{want}` |" in next(
            line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert default_text(node) == want


def test_type_names():
    assert type_name(Literal["a", "b"]) == '"a" | "b"'
    assert type_name(int | None) == "int | null"
    assert type_name(tuple[str, ...]) == "list[str]"
    assert type_name(tuple[float, float]) == "[float, float]"
    assert type_name(dict[str, float]) == "map of str to float"
    assert type_name(Literal["auto"] | Annotated[int, Field(ge=1)]) == '"auto" | int'


def test_recipe_keys_treat_a_mapping_value_as_one_key(tmp_path: Path):
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "a.yaml").write_text("rollout:\n  max_new_tokens: 8\ncluster:\n  engine_resources: "
                                              "{rlpt_rollout: 1}\n  rollout:\n    max: 4\n")
    (tmp_path / "b.yaml").write_text("rollout: {max_new_tokens: 4}\n")
    assert recipe_keys(tmp_path) == {"rollout.max_new_tokens": ["b.yaml", "grpo/a.yaml"],
                                     "cluster.engine_resources": ["grpo/a.yaml"], "cluster.rollout.max": ["grpo/a.yaml"]}


def test_every_shipped_recipe_loads_and_its_keys_are_listed():
    used = recipe_keys()
    assert set(used) <= all_keys() and used  # render() also refuses a recipe key the schema lacks
    for recipe in sorted((REPO / "configs").rglob("*.yaml")):
        load_config(recipe)


def test_cli_writes_the_reference(tmp_path: Path, capsys):
    assert main(["config", "reference", "--out", str(tmp_path / "c.md")]) == 0
    assert (tmp_path / "c.md").read_text(encoding="utf-8") == render()
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out.endswith(render())
