import pytest
from pydantic import ValidationError

from rlpt.config import ConfigError, RlptConfig, dump_config, load_config, save_config

pytestmark = pytest.mark.unit


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_builtin_run():
    cfg = load_config(None)
    assert cfg.model.path is None and cfg.data.task == "arith" and cfg.algorithm.name == "grpo"
    assert set(RlptConfig.model_fields) >= {"model", "data", "rollout", "verifier", "algorithm", "learner", "sync",
                                            "cluster", "run"}


def test_yaml_plus_dotted_overrides(tmp_path):
    p = write(tmp_path, "learner:\n  lr: 1e-4\n  zero_stage: 3\nrollout:\n  stop: ['\\n']\n")
    cfg = load_config(p, ["learner.zero_stage=1", "run.name=exp1", "rollout.stop=[a, b]", "model.path=null"])
    assert cfg.learner.lr == pytest.approx(1e-4)  # PyYAML alone would read '1e-4' as a string
    assert cfg.learner.zero_stage == 1 and cfg.run.name == "exp1"
    assert cfg.rollout.stop == ("a", "b")


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    p = write(tmp_path, "algorithm:\n  grpo:\n    eps_hihg: 0.3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "algorithm.grpo.eps_hihg: unknown key" in msg and "eps_high" in msg and str(p) in msg


def test_unknown_section_from_override():
    with pytest.raises(ConfigError, match=r"learnr: unknown key \(allowed here: model, data"):
        load_config(None, ["learnr.lr=1"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("learner.lr=fast", "learner.lr: expected a number, got 'fast' (str)"),
        ("run.steps='10'", "run.steps: expected an integer, got '10' (str)"),
        ("run.tensorboard=yes please", "run.tensorboard: expected true or false, got 'yes please' (str)"),
        ("learner.zero_stage=4", "learner.zero_stage"),
        ("rollout.temperature=0", "rollout.temperature"),
    ],
)
def test_wrong_type_or_value_names_key_expected_and_got(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "run:\n  steps: 3\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+:\d+: invalid YAML"):
        load_config(p)


def test_bad_override_syntax_and_value_as_section():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(None, ["=3"])
    with pytest.raises(ConfigError, match="learner.lr is a value, not a section"):
        load_config(None, ["learner.lr=1.0", "learner.lr.x=2"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_exactly_one_data_source():
    with pytest.raises(ConfigError, match="exactly one of data.task"):
        load_config(None, ["data.path=x.jsonl"])
    cfg = load_config(None, ["data.path=x.jsonl", "data.task=null"])
    assert cfg.data.path == "x.jsonl"


def test_the_hf_engine_refuses_tensor_parallelism_and_names_both_keys():
    with pytest.raises(ConfigError, match=r"rollout.engine=hf .* rollout.tensor_parallel_size must be 1 \(got 2\)"):
        load_config(None, ["rollout.engine=hf", "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(None, ["rollout.engine=sglang"])
    assert load_config(None, ["rollout.engine=hf"]).rollout.engine == "hf"
    assert load_config(None, []).rollout.engine == "vllm"


def test_frozen_after_load():
    cfg = load_config(None)
    with pytest.raises(ValidationError):
        cfg.learner.lr = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.rollout.stop.append("x")  # tuples, not lists: nested values cannot be mutated either


def test_resolved_copy_round_trips(tmp_path):
    cfg = load_config(None, ["learner.lr=3e-4", "rollout.stop=['\\n']", "run.name=rt"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert "lr: 0.0003" in dump_config(cfg)


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[2].joinpath("configs").rglob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        load_config(f)
