"""The `rlpt` command line. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape

from rlpt.config import RlptConfig, dump_config, load_config
from rlpt.errors import RunFault, SetupError, UsageError

err = Console(stderr=True)
out = Console()


def say(console: Console, text: str) -> None:
    """Print as is: job messages and paths hold brackets that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)




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


def cmd_config_reference(ns: argparse.Namespace) -> int:
    from rlpt.config_reference import render

    text = render()
    if ns.out is None:
        sys.stdout.write(text)
    else:
        Path(ns.out).write_text(text, encoding="utf-8")
        out.print(f"wrote the configuration reference to {ns.out}")
    return 0


def cmd_plot(ns: argparse.Namespace) -> int:
    from rlpt.plots import plot_runs

    runs = [Path(d) for d in ns.run_dirs]
    res = plot_runs(runs, Path(ns.out) if ns.out else runs[0] / "plot.png")
    note = f" (no data for: {', '.join(res.empty)})" if res.empty else ""
    out.print(f"wrote {res.path}: {len(runs)} run(s), {len(res.panels)} panels{note}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    import time

    from rlpt.report import write_report

    while True:
        path, done = write_report(Path(ns.run_dir), Path(ns.out) if ns.out else None, refresh_s=ns.refresh)
        state = "finished" if done else "in progress"
        out.print(f"wrote {path} (run {state}; open it in a browser, no network needed)")
        if done or ns.watch is None:
            return 0
        time.sleep(ns.watch)


def cmd_model_init_tiny(ns: argparse.Namespace) -> int:
    from rlpt.models.tiny import init_tiny

    path = init_tiny(ns.out, ns.arch, ns.size, ns.seed)
    out.print(f"wrote a random-init {ns.arch}/{ns.size} model and its tokenizer to {path}")
    return 0


def cmd_rm_train(ns: argparse.Namespace) -> int:
    from rlpt.rm_train import RMTrainSettings, train

    train(RMTrainSettings(tuple(ns.pairs), ns.model, ns.out, ns.epochs, ns.lr, ns.batch_size, ns.max_len,
                          ns.holdout, ns.seed))
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    from rlpt.preflight import report
    from rlpt.prepare import inspect_run

    cfg = _load(ns.args)
    prep = inspect_run(cfg)  # the engine's support of the architecture included
    say(out, report(prep.facts, prep.shape, prep.lengths, cfg, prep.template, prep.warnings))
    say(out, "ok: the model, tokenizer, data and config fit together")
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
    figures = ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in res.figures.items()
                        if k not in ("eval/prompts", "eval/errors"))
    out.print(f"evaluated {res.num_prompts} prompts, greedy + {cfg.eval.samples} samples each: {figures}; "
              f"correct {'n/a (the verifier gives no correctness)' if res.correct_frac is None else f'{res.correct_frac:.3f}'}, "
              f"verifier errors {res.error_count}, {res.tokens_per_s:.0f} tok/s -> {res.run_dir}")
    return 0


def refuse_a_used_run_dir(run_dir: Path) -> None:
    """A new run must not write into an earlier run's directory: its metrics rows would follow the old ones in one
    file, and `--resume` would later pick whichever checkpoint is newest, of either run."""
    used = [name for name in ("metrics.jsonl", "checkpoints") if (run_dir / name).exists()]
    if used:
        raise UsageError(f"{run_dir} already holds a run ({', '.join(used)}): continue it with `rlpt train --resume "
                         f"{run_dir}`, or give this run another run.name / --run-dir (or delete that directory)")


def cmd_train(ns: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rlpt.prepare import prepare

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
        refuse_a_used_run_dir(run_dir)
    # The preflight runs before the actor stack is imported (torch, Ray, DeepSpeed): a setup that cannot work fails
    # in about a second. A resumed run checks its checkpoint first (actors.launch.train prepares it then).
    prep = None if ns.resume else prepare(cfg, run_dir)
    ray_s = None
    try:
        if prep is None:
            from actors.launch import train
        else:  # Ray starts while the actor stack is imported (the two overlap; see init_ray_while_importing)
            from actors.placement import init_ray_while_importing

            ray_s, launch = init_ray_while_importing(cfg, "actors.launch")
            train = launch.train
    except ImportError as e:
        raise UsageError(f"rlpt train needs the actor stack (ray, vllm, deepspeed): {e}") from None
    from rlpt.loops.common import total_steps

    steps = total_steps(cfg)
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("reward {task.fields[r]:.3f}"),
               TextColumn("step {task.fields[t]:.2f}s"), TimeElapsedColumn())
    # The bar appears with the first finished step: preflight and start-up print their own one-line events.
    bar = Progress(*columns, console=err)
    task = bar.add_task("train", total=steps, r=0.0, t=0.0)

    def on_step(step: int, m: dict[str, float]) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=step + 1, r=m["reward/mean"], t=m["timing/step"])

    try:
        seconds = train(cfg, run_dir, on_step, resume=bool(ns.resume), from_step=ns.from_step, prep=prep, ray_s=ray_s)
    finally:
        bar.stop()
    out.print(f"trained {steps} {cfg.algorithm.name} steps in {seconds:.0f}s -> {run_dir} (metrics.jsonl, checkpoints/, rollouts/)")
    return 0


# ------------------------------------------------------------------------------------------------ submit / jobs
# The Ray Jobs client lives in actors/submit.py (it needs ray[default]); these only forward to it.
def _jobs_command(name: str) -> Any:
    try:
        from actors import submit
    except ImportError as e:
        raise UsageError(f"rlpt submit / jobs need ray[default]: {e}") from None
    return getattr(submit, name)


def cmd_submit(ns: argparse.Namespace) -> int:
    return int(_jobs_command("cmd_submit")(ns))


def cmd_jobs_status(ns: argparse.Namespace) -> int:
    return int(_jobs_command("cmd_jobs_status")(ns))


def cmd_jobs_logs(ns: argparse.Namespace) -> int:
    return int(_jobs_command("cmd_jobs_logs")(ns))


def cmd_jobs_stop(ns: argparse.Namespace) -> int:
    return int(_jobs_command("cmd_jobs_stop")(ns))


def cmd_jobs_list(ns: argparse.Namespace) -> int:
    return int(_jobs_command("cmd_jobs_list")(ns))


def default_job_address() -> str:
    """RAY_API_SERVER_ADDRESS / RAY_ADDRESS when an http(s) URL, else the local head's dashboard. (On a cluster
    node RAY_ADDRESS is usually the GCS address host:6379, which is not the job server.)"""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(name, "").startswith(("http://", "https://")):
            return os.environ[name]
    return "http://127.0.0.1:8265"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlpt", description="Ray-distributed RL post-training for LLMs")
    sub = p.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="show the resolved config, its schema or its reference").add_subparsers(
        dest="config_command", required=True)
    show = config.add_parser("show", help="print the resolved config: rlpt config show [CONFIG] [key=value ...]")
    show.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    show.set_defaults(fn=cmd_config_show)
    config.add_parser("schema", help="print the JSON schema of the config").set_defaults(fn=cmd_config_schema)
    ref = config.add_parser("reference", help="the configuration reference (docs/config.md) as Markdown: every key, "
                                              "type, default, description and the recipes that set it")
    ref.add_argument("--out", default=None, help="write it to this file (default: print it)")
    ref.set_defaults(fn=cmd_config_reference)

    pl = sub.add_parser("plot", help="one PNG of a run's curves (reward, length, phase times, gaps, KL, eval); "
                                     "several runs overlaid")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", default=None, help="the PNG to write (default: FIRST_RUN_DIR/plot.png)")
    pl.set_defaults(fn=cmd_plot)

    rp = sub.add_parser("report", help="one self-contained HTML page of a run: summary, curves, events, sample "
                                       "rollouts, every metric, the config")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--out", default=None, help="the HTML file to write (default: RUN_DIR/report.html)")
    rp.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                    help="re-write the page every SECONDS until the run has logged all its steps")
    rp.add_argument("--refresh", type=int, default=30, metavar="SECONDS",
                    help="while the run is in progress the page reloads itself this often (default 30)")
    rp.set_defaults(fn=cmd_report)

    model = sub.add_parser("model", help="model utilities").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("init-tiny", help="build a random-init tiny model + locally trained tokenizer")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    tiny.add_argument("--size", choices=["tiny", "small"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(fn=cmd_model_init_tiny)

    rm = sub.add_parser("rm", help="reward models").add_subparsers(dest="rm_command", required=True)
    rmt = rm.add_parser("train", help="fit a Bradley-Terry reward model on preference pairs (prompt, chosen, "
                                      "rejected) and save an HF directory for a reward term of kind model")
    rmt.add_argument("--pairs", nargs="+", required=True, metavar="FILE",
                     help="parquet/JSONL files with prompt, chosen, rejected (e.g. a DPO run's pairs/round_*.parquet)")
    rmt.add_argument("--model", required=True, metavar="DIR", help="base HF model directory (the head starts fresh)")
    rmt.add_argument("--out", required=True, metavar="DIR", help="where to save the reward model (must not exist)")
    rmt.add_argument("--epochs", type=int, default=3)
    rmt.add_argument("--lr", type=float, default=1e-4)
    rmt.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    rmt.add_argument("--max-len", type=int, default=512, help="longer pairs (in tokens) are skipped and counted")
    rmt.add_argument("--holdout", type=float, default=0.1, help="share of pairs held out to report accuracy")
    rmt.add_argument("--seed", type=int, default=0)
    rmt.set_defaults(fn=cmd_rm_train)

    ck = sub.add_parser("check", help="preflight only: model context, EOS ids, chat template, prompt lengths (no "
                                      "actors, no weights loaded)")
    ck.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    ck.set_defaults(fn=cmd_check)

    tr = sub.add_parser("train", help="train with the configured loop on a Ray cluster (local if none)")
    tr.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    tr.add_argument("--run-dir", default=None, help="default: <run.root>/<run.name>")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint")
    tr.add_argument("--from-step", type=int, default=None, help="with --resume: the checkpoint of this step")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="greedy and sampled completions of the evaluation set (eval.*; else the "
                                     "data) with transformers, verified: pass@k, mean@n (no Ray)")
    ev.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    ev.add_argument("--run-dir", default=None, help="default: <run.root>/<run.name>-eval")
    ev.add_argument("--num-prompts", type=int, default=64, help="at most this many prompts (default 64)")
    ev.add_argument("--checkpoint", default=None, help="evaluate this HF checkpoint directory instead")
    ev.set_defaults(fn=cmd_eval)

    sb = sub.add_parser("submit", help="submit `rlpt train [CONFIG] [overrides]` as a Ray job to a running cluster")
    sb.add_argument("args", nargs="*", metavar="CONFIG|key.path=value")
    _address_arg(sb)
    sb.add_argument("--follow", action="store_true", help="stream the job's logs; exit 0 if it SUCCEEDED, else 1")
    sb.add_argument("--working-dir", default=None, help="uploaded as the job's working dir (default: the current "
                                                        "directory); CONFIG must be inside it")
    sb.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var (repeatable)")
    sb.add_argument("--pip", action="append", default=[], metavar="PKG", help="pip package for the job (repeatable)")
    sb.add_argument("--runtime-env", default=None, metavar="FILE.yaml", help="base Ray runtime_env; flags win")
    sb.add_argument("--no-validate", dest="validate", action="store_false",
                    help="skip checking the config here (it is then checked, and fails, on the cluster)")
    sb.add_argument("--submission-id", default=None, help="job id to use (default: generated by Ray)")
    sb.add_argument("--python", default="python", help="interpreter the job runs on the cluster (default: python)")
    sb.set_defaults(fn=cmd_submit)

    jobs = sub.add_parser("jobs", help="status, logs, stop, list of Ray jobs").add_subparsers(
        dest="jobs_command", required=True)
    for name, fn, what in (("status", cmd_jobs_status, "print a job's status and message"),
                           ("logs", cmd_jobs_logs, "print (or --follow) a job's logs"),
                           ("stop", cmd_jobs_stop, "stop a job and wait until it has stopped")):
        jp = jobs.add_parser(name, help=what)
        jp.add_argument("job_id", metavar="ID")
        _address_arg(jp)
        jp.set_defaults(fn=fn)
        if name == "logs":
            jp.add_argument("--follow", action="store_true", help="until the job ends; exit 0 if it SUCCEEDED")
        if name == "stop":
            jp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to stop")
    ls = jobs.add_parser("list", help="every job the cluster knows: id, status, start, entrypoint")
    _address_arg(ls)
    ls.set_defaults(fn=cmd_jobs_list)
    return p


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=default_job_address(),
                   help="the cluster's job server (dashboard) URL; default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS "
                        "if it is an http URL, else http://127.0.0.1:8265")


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return int(ns.fn(ns))
    except (SetupError, FileExistsError, FileNotFoundError, NotImplementedError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
        return 2
    except RunFault as e:  # a fault the run could not survive: the message names the actor and the phase
        err.print(f"[bold red]error:[/] {type(e).__name__}: {escape(str(e))}", markup=True, highlight=False,
                  soft_wrap=True)
        return 1


def entry() -> None:
    """The `rlpt` command (and `python -m rlpt.cli`): `main`, then the exit handlers, then the process ends without
    CPython tearing down its modules. By then a run's files are closed, its actors killed and Ray shut down; the
    teardown of torch, transformers and Ray's modules is ~0.5-0.9 s of every command on 2 cores, and does nothing
    a user needs. Exit handlers (logging's, Ray's, TensorBoard's) still run and stdout/stderr are flushed. A
    non-daemon thread still alive (none of rlpt's) gets the normal exit, which waits for it."""
    import atexit
    import threading

    rc = main()
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(rc)
    atexit._run_exitfuncs()  # CPython's own call at exit; it clears the handlers it ran
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
