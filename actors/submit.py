"""`rlpt submit` and `rlpt jobs ...`: the Ray Jobs client side of the command line (rlpt/cli.py parses the
arguments and forwards here). The runtime_env is built from the working dir, the env vars every actor needs, and
the user's flags; the config is validated locally first, so a bad key fails here with its key path.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from actors.jobs import JobError, JobServer
from rlpt.cli import err, out, say, split_config_args
from rlpt.config import load_config
from rlpt.errors import UsageError

# Kept out of the uploaded working dir (Ray also honours .gitignore / .rayignore there); Ray caps its size.
JOB_EXCLUDES = (".venv/", "venv/", ".git/", "runs/", "checkpoints/", "__pycache__/", "*.pyc", ".pytest_cache/",
                "*.egg-info/", ".whl/")
PASS_THROUGH_ENV = ("VLLM_CPU_KVCACHE_SPACE",)  # sent to the job when set here (see ../shared/notes/cpu-stack.md)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """`--env KEY=VALUE` (repeatable) -> {KEY: VALUE}; the value may contain '=' and be empty."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--env {item!r}: expected KEY=VALUE with KEY a valid environment variable name")
        env[key] = value
    return env


def build_entrypoint(config: str | None, overrides: Sequence[str], python: str = "python") -> str:
    """The job's shell command: `python -m rlpt.cli train [CONFIG] [overrides]`, each word shell-quoted."""
    return shlex.join([python, "-m", "rlpt.cli", "train", *([config] if config else []), *overrides])


def config_in_working_dir(config: str, working_dir: Path) -> str:
    """CONFIG as the job sees it: relative to the working dir, which is all the job gets. A config outside it is
    refused (copying it in behind the user's back would hide which file ran)."""
    path = Path(config).resolve()
    if not path.is_file():
        raise UsageError(f"CONFIG {config}: no such file")
    if not path.is_relative_to(working_dir):
        raise UsageError(f"CONFIG {config} is outside the job's working dir {working_dir}: the job only gets the "
                         f"working dir; move the config into it or pass --working-dir")
    return path.relative_to(working_dir).as_posix()


def build_runtime_env(base: Mapping[str, Any], working_dir: str, env_defaults: Mapping[str, str],
                      env: Mapping[str, str], pip: Sequence[str]) -> dict[str, Any]:
    """Ray runtime_env: a `--runtime-env` file's keys, under rlpt's defaults (env vars actors need, excludes),
    under the command-line flags (`--working-dir`, `--env`, `--pip`)."""
    rt = dict(base)
    rt["working_dir"] = working_dir
    rt["excludes"] = list(dict.fromkeys([*base.get("excludes", ()), *JOB_EXCLUDES]))
    rt["env_vars"] = {**env_defaults, **{str(k): str(v) for k, v in (base.get("env_vars") or {}).items()}, **env}
    if pip:
        have = base.get("pip")
        if have is None or isinstance(have, list):
            rt["pip"] = [*(have or []), *pip]
        elif isinstance(have, dict):
            rt["pip"] = {**have, "packages": [*have.get("packages", []), *pip]}
        else:
            raise UsageError(f"--pip adds to a runtime_env `pip` list, but the --runtime-env file has pip: {have!r}")
    return rt


def _read_runtime_env(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"--runtime-env {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--runtime-env {path}: expected a mapping (working_dir, env_vars, pip, ...), got "
                         f"{type(data).__name__}")
    return data


@contextmanager
def _job_errors() -> Iterator[None]:
    try:
        yield
    except JobError as e:
        raise UsageError(str(e)) from None


def _server(address: str) -> JobServer:
    return JobServer(address)


def _report(info: Any) -> int:
    """Print a terminal job's status and message; 0 for SUCCEEDED, 1 otherwise."""
    say(out, f"job {info.job_id} {info.status}: {info.message}")
    return 0 if info.status == "SUCCEEDED" else 1


def _follow(server: Any, job_id: str) -> int:
    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        server.tail_logs(job_id, write)
        return _report(server.wait(job_id))
    except KeyboardInterrupt:
        say(err, f"stopped following; job {job_id} keeps running. Stop it with: rlpt jobs stop {job_id} "
                 f"--address {server.address}")
        return 130


def cmd_submit(ns: argparse.Namespace) -> int:
    path, overrides = split_config_args(ns.args)
    base = _read_runtime_env(ns.runtime_env) if ns.runtime_env else {}
    working_dir = str(ns.working_dir or base.get("working_dir") or ".")
    job_config = path
    if "://" not in working_dir:  # a local directory (else a remote package URI: the config path is taken as is)
        wd = Path(working_dir).resolve()
        if not wd.is_dir():
            raise UsageError(f"--working-dir {working_dir}: not a directory")
        working_dir = str(wd)
        job_config = config_in_working_dir(path, wd) if path else None
    if ns.validate:  # fail here, with the key path, rather than on the cluster
        cfg = load_config(path, overrides)
        if not Path(cfg.run.root).is_absolute():
            say(err, f"warning: run.root={cfg.run.root!r} is relative: in the job it lands in the job's temporary "
                     f"copy of the working dir on the head node; pass run.root=/a/shared/absolute/path to keep the "
                     f"run")
    from actors.placement import ACTOR_ENV

    env_defaults = {k: os.environ.get(k, v) for k, v in ACTOR_ENV.items()}
    env_defaults.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    runtime_env = build_runtime_env(base, working_dir, env_defaults, parse_env(ns.env), ns.pip)
    entrypoint = build_entrypoint(job_config, overrides, ns.python)
    with _job_errors():
        server = _server(ns.address)
        job_id = server.submit(entrypoint, runtime_env, ns.submission_id)
        say(out, f"submitted job {job_id} to {server.address}: {entrypoint}")
        say(out, f"dashboard: {server.dashboard_url(job_id)}")
        if not ns.follow:
            say(out, f"logs: rlpt jobs logs {job_id} --follow --address {server.address}")
            return 0
        return _follow(server, job_id)


def cmd_jobs_status(ns: argparse.Namespace) -> int:
    with _job_errors():
        info = _server(ns.address).info(ns.job_id)
    say(out, f"job {info.job_id}: {info.status}\n{info.message}\nentrypoint: {info.entrypoint}")
    return 0


def cmd_jobs_logs(ns: argparse.Namespace) -> int:
    with _job_errors():
        server = _server(ns.address)
        if ns.follow:
            return _follow(server, ns.job_id)
        sys.stdout.write(server.logs(ns.job_id))
    return 0


def cmd_jobs_stop(ns: argparse.Namespace) -> int:
    with _job_errors():
        server = _server(ns.address)
        if not server.stop(ns.job_id):
            say(out, f"job {ns.job_id} was not running ({server.info(ns.job_id).status})")
            return 0
        _report(server.wait(ns.job_id, timeout_s=ns.timeout))  # STOPPED (or it finished meanwhile)
    return 0


def cmd_jobs_list(ns: argparse.Namespace) -> int:
    import time

    with _job_errors():
        infos = _server(ns.address).list()
    for i in sorted(infos, key=lambda i: i.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.start_time)) if i.start_time else "-"
        sys.stdout.write(f"{i.job_id}\t{i.status}\t{started}\t{i.entrypoint}\n")
    return 0
