"""The `rlpt` command line. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console

from rlpt.config import ConfigError, RlptConfig, dump_config, load_config

err = Console(stderr=True)
out = Console()


class UsageError(ValueError):
    pass


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key.path=value ...]`: words with '=' are overrides, at most one other word is the config file."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise UsageError(f"expected at most one CONFIG file, got {paths} (overrides look like key.path=value)")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


def _load(args: Sequence[str]) -> RlptConfig:
    path, overrides = split_config_args(args)
    return load_config(path, overrides)


def cmd_config_show(ns: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_load(ns.args)))  # plain: machine-readable, never wrapped
    return 0


def cmd_config_schema(ns: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(RlptConfig.model_json_schema(), indent=2) + "\n")
    return 0


def cmd_model_init_tiny(ns: argparse.Namespace) -> int:
    from rlpt.models.tiny import init_tiny

    path = init_tiny(ns.out, ns.arch, ns.size, ns.seed)
    out.print(f"wrote a random-init {ns.arch}/{ns.size} model and its tokenizer to {path}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rlpt.evaluate import evaluate

    cfg = _load(ns.args)
    run_dir = Path(ns.run_dir) if ns.run_dir else Path(cfg.run.root) / f"{cfg.run.name}-eval"
    with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TextColumn("reward {task.fields[r]:.3f}"),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("eval", total=ns.num_prompts, r=0.0)
        res = evaluate(cfg, run_dir, ns.num_prompts, Path(ns.checkpoint) if ns.checkpoint else None,
                       progress=lambda done, total, r: bar.update(task, completed=done, r=r))
    out.print(f"evaluated {res.num_prompts} prompts x {cfg.rollout.samples_per_prompt} samples: "
              f"reward/mean {res.reward_mean:.3f}, correct {res.correct_frac:.3f}, verifier errors "
              f"{res.error_count}, {res.tokens_per_s:.0f} tok/s -> {res.run_dir}")
    return 0


def cmd_train(ns: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        from actors.launch import train
    except ImportError as e:
        raise UsageError(f"rlpt train needs the actor stack (ray, vllm, deepspeed): {e}") from None
    from rlpt.loops.common import total_steps

    if ns.resume:
        run_dir = Path(ns.resume)
        path, overrides = split_config_args(ns.args)
        if path is not None:
            raise UsageError("with --resume the config is RUN_DIR/config.yaml; pass only key.path=value overrides")
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        cfg = _load(ns.args)
        run_dir = Path(ns.run_dir) if ns.run_dir else Path(cfg.run.root) / cfg.run.name
    steps = total_steps(cfg)
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("reward {task.fields[r]:.3f}"),
               TextColumn("step {task.fields[t]:.2f}s"), TimeElapsedColumn())
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("train", total=steps, r=0.0, t=0.0)

        def on_step(step: int, m: dict[str, float]) -> None:
            bar.update(task, completed=step + 1, r=m["reward/mean"], t=m["timing/step"])

        seconds = train(cfg, run_dir, on_step, resume=bool(ns.resume), from_step=ns.from_step)
    out.print(f"trained {steps} {cfg.algorithm.name} steps in {seconds:.0f}s -> {run_dir} (metrics.jsonl, checkpoints/, rollouts/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlpt", description="Ray-distributed RL post-training for LLMs")
    sub = p.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="show the resolved config or its schema").add_subparsers(
        dest="config_command", required=True)
    show = config.add_parser("show", help="print the resolved config: rlpt config show [CONFIG] [key=value ...]")
    show.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    show.set_defaults(fn=cmd_config_show)
    config.add_parser("schema", help="print the JSON schema of the config").set_defaults(fn=cmd_config_schema)

    model = sub.add_parser("model", help="model utilities").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("init-tiny", help="build a random-init tiny model + locally trained tokenizer")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    tiny.add_argument("--size", choices=["tiny", "small"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(fn=cmd_model_init_tiny)

    tr = sub.add_parser("train", help="train with the configured loop on a Ray cluster (local if none)")
    tr.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    tr.add_argument("--run-dir", default=None, help="default: <run.root>/<run.name>")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint")
    tr.add_argument("--from-step", type=int, default=None, help="with --resume: the checkpoint of this step")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="sample and verify completions with transformers (no Ray)")
    ev.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    ev.add_argument("--run-dir", default=None, help="default: <run.root>/<run.name>-eval")
    ev.add_argument("--num-prompts", type=int, default=64)
    ev.add_argument("--checkpoint", default=None, help="evaluate this HF checkpoint directory instead")
    ev.set_defaults(fn=cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from rlpt.data import DataError
    from rlpt.models import ModelPathError
    from rlpt.verifiers.plugin import VerifierLoadError

    ns = build_parser().parse_args(argv)
    try:
        return int(ns.fn(ns))
    except (ConfigError, UsageError, DataError, ModelPathError, VerifierLoadError, FileExistsError,
            FileNotFoundError, NotImplementedError) as e:
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
