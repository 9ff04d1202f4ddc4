"""Run a verifier in a separate, killable process so one bad rollout cannot stall or crash the whole batch.

Why: an in-process timeout cannot stop a verifier stuck in C code, spinning with signals ignored, or calling
`os._exit` (user plug-ins, sympy on adversarial answers, code execution). Here the verifier lives in a child
process in its own process group (`os.setsid`), so a SIGKILL to the group also takes anything it spawned.
Each rollout gets exactly one ScoredRollout, in input order: a hang becomes an explicit "timeout: ..." error,
a dead child a "crash: ..." error (reward = `error_reward`, correct = None), and a fresh child scores the rest.

The child is a daemon process (so it dies with an interpreter that forgot `close()`); hence a verifier cannot
start multiprocessing children of its own: use `subprocess` (e.g. for a code sandbox), which the group kill covers.

A verifier that cannot even load (bad spec, import error) is a config problem: the child reports it as its first
message and the constructor raises `VerifierProcessError` instead of marking every row.

A batch goes to the child in one message, as (prompt, completion) items (token ids and logprobs stay behind: no
verifier reads them), and the child streams one small message back per item as soon as it is scored. The parent
holds each item to `timeout_s` counted from the previous item's verdict (from the send, for the first), so "which
item hung" stays unambiguous; after a hang or crash the rest of the batch goes to a fresh child in one message.

Cost (2-core CPU dev box, `spawn`): starting a child takes ~2-2.7 s, almost all of it importing torch
(rlpt.types) and rlpt.verifiers; it is paid once per IsolatedScorer and again after each timeout or crash. For
128 trivial rollouts (verifier "numeric"; benchmarks/verify_overhead.py, figures in benchmarks/RESULTS.md) the
isolated call adds ~0.6-1.2 ms over scoring them in-process; one round trip per item added ~20-24 ms. Sending all
128 verdicts in one message instead of streaming them saved only ~0.3 ms inside a Ray actor (2.2 vs 2.5 ms a
batch), and would lose "which item hung": not done.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import select
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

from rlpt.types import Prompt, Rollout, Score, ScoredRollout

_READY = "ready"
_LOAD_ERROR = "load_error"
_REAP_S = 5.0  # how long to wait for a killed or exiting child before giving up on its exit code

VerifyItem = tuple[Prompt, str]  # what a verifier sees of a rollout: its prompt and its completion text
# How the child turns its spec into the function it calls per item; None = rlpt.verifiers.load_verifier. The
# environment pool passes rlpt.environments.replay.load_env_stepper: its items are (prompt, model turns so far).
Loader = Callable[[str], Callable[[Prompt, Any], Score]]


# A verifier's result for one item, (reward, correct, info, error): a ScoredRollout without its rollout. A plain
# tuple on purpose: 128 of them pickle in ~20 us, as a NamedTuple in ~200 us (~450 us with Ray's cloudpickle),
# and they cross a pipe and a Ray call every step.
Verdict = tuple[float, bool | None, Mapping[str, Any], str | None]


def scored(rollout: Rollout, verdict: Verdict) -> ScoredRollout:
    reward, correct, info, error = verdict
    return ScoredRollout(rollout, reward=reward, correct=correct, info=info, error=error)


def verify_items(rollouts: Sequence[Rollout]) -> list[VerifyItem]:
    """The (prompt, completion) items of rollouts: token ids and logprobs stay behind (no verifier uses them)."""
    return [(r.prompt, r.text) for r in rollouts]


class VerifierProcessError(RuntimeError):
    """The verifier process could not be started or kept running; the message says which verifier and why."""


def _child_main(conn: Connection, spec: str, error_reward: float, loader: Loader | None = None) -> None:
    """Entry point of the verifier process: load once, then for each batch of items (until None/EOF) send one
    (index, reward, correct, info, error) message per item as soon as it is scored."""
    os.setsid()  # own process group: the parent's killpg then also reaches whatever the verifier spawns
    try:
        if loader is None:
            from rlpt.verifiers import load_verifier  # here, not at top level: only the child pays for it

            loader = load_verifier
        verify = loader(spec)
    except BaseException as e:  # noqa: BLE001 - any load failure (even SystemExit at import) is reported
        conn.send((_LOAD_ERROR, f"{type(e).__name__}: {e}"))
        return
    conn.send((_READY, os.getpid()))
    while True:
        try:
            batch = conn.recv()
        except EOFError:  # the parent went away
            return
        if batch is None:
            return
        for index, (prompt, text) in enumerate(batch):
            conn.send_bytes(_verdict_message(verify, index, prompt, text, error_reward))


def _verdict_message(verify: Callable[[Prompt, Any], Score], index: int, prompt: Prompt, text: Any,
                     error_reward: float) -> bytes:
    """(index, reward, correct, info, error), pickled. The same verdicts as rlpt.scoring.score_rollout (a test
    holds them equal), without building a Rollout and a ScoredRollout per item (~3.5 us, most of the item's cost)."""
    try:
        score = verify(prompt, text)
    except Exception as e:  # noqa: BLE001 - a verifier bug must become a counted error row, not kill the run
        msg: tuple[Any, ...] = (index, error_reward, None, {}, f"{type(e).__name__}: {e}")
    else:
        if isinstance(score, Score):
            msg = (index, float(score.reward), score.correct, dict(score.info), None)
        else:
            wrong = f"TypeError: verifier returned {type(score).__name__}, expected Score"
            msg = (index, error_reward, None, {}, wrong)
    try:
        return pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - e.g. unpicklable info: it fails here, before anything is written
        return pickle.dumps((index, error_reward, None, {}, f"{type(e).__name__}: verifier result cannot be sent: {e}"),
                            pickle.HIGHEST_PROTOCOL)


def _kill_group(proc: BaseProcess) -> None:
    """SIGKILL the child's process group (it is the group leader after setsid), then the child itself."""
    if proc.pid is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # group already gone, or the child died before its setsid
    if proc.exitcode is None:
        proc.kill()
    proc.join(_REAP_S)


class IsolatedScorer:
    """Scores rollouts with `load_verifier(verifier_spec)` running in a child process, `timeout_s` per item.
    `loader` and `kind` serve other per-item calls (the environment pool: `Loader`); `kind` names them in errors;
    `item_cost(item)` multiplies an item's timeout (an environment call that may replay earlier steps)."""

    def __init__(self, verifier_spec: str, timeout_s: float, error_reward: float, start_method: str = "spawn",
                 startup_timeout_s: float = 120.0, max_restarts: int = 32, loader: Loader | None = None,
                 kind: str = "verifier", item_cost: Callable[[Any], int] | None = None) -> None:
        if timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError(f"timeout_s and startup_timeout_s must be > 0, got {timeout_s}, {startup_timeout_s}")
        self.spec, self.loader, self.kind, self.item_cost = verifier_spec, loader, kind, item_cost
        self.timeout_s = timeout_s
        self.error_reward = error_reward
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts  # per score() call: beyond that the verifier or timeout is wrong
        self.startup_s: list[float] = []  # seconds each child took to become ready, for metrics and tests
        self._ctx = mp.get_context(start_method)
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._poller: select.poll | None = None  # readable-or-closed on _conn
        self._start()  # eagerly, so a bad spec fails at construction rather than at the first batch

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        """One ScoredRollout per rollout, in order; a hang or crash marks that item only."""
        return [scored(r, v) for v, r in zip(self.score_items(verify_items(rollouts)), rollouts)]

    def score_items(self, items: Sequence[tuple[Prompt, Any]]) -> list[Verdict]:
        """One Verdict per (prompt, completion) item, in order. The items go to the child in one message; a hang
        or crash marks the item in flight, and a fresh child gets the rest (again in one message)."""
        verdicts: list[Verdict] = []
        failures: list[str] = []
        while len(verdicts) < len(items):
            if self._proc is None:
                self._start()  # lazily after a failure, so a batch ending in a failure costs no spare start
            try:
                failure = self._stream(items, verdicts)
            except BaseException:
                self._stop(graceful=False)  # e.g. KeyboardInterrupt mid-batch: the pipe state is unknown
                raise
            if failure is None:
                break
            verdicts.append((self.error_reward, None, {}, failure))
            failures.append(failure)
            self._stop(graceful=False)
            if len(failures) > self.max_restarts:
                raise VerifierProcessError(
                    f"{self.kind} {self.spec!r} timed out or crashed on {len(failures)} of the first {len(verdicts)} "
                    f"items of a batch of {len(items)} (max_restarts={self.max_restarts}); "
                    f"first: {failures[0]!r}. Fix the {self.kind} or raise timeout_s / max_restarts.")
        return verdicts

    def _stream(self, items: Sequence[tuple[Prompt, Any]], verdicts: list[Verdict]) -> str | None:
        """Send the items not scored yet in one message and append their verdicts as the child streams them back.
        Returns None when every one came, else the error of the item the child hung or died on (the next one):
        each verdict must come within timeout_s of the previous one (of the send, for the first)."""
        assert self._conn is not None and self._poller is not None
        first = len(verdicts)
        try:
            self._conn.send(list(items[first:]))
        except (BrokenPipeError, ConnectionResetError):
            return self._crash_message()
        for index in range(len(items) - first):
            limit_s = self.timeout_s * (1 if self.item_cost is None else self.item_cost(items[first + index]))
            # A poll object made once per child: Connection.poll builds a selector on every call (~4 us vs ~0.5).
            if not self._poller.poll(math.ceil(limit_s * 1000)):
                return f"timeout: {self.kind} {self.spec} took longer than {limit_s}s"
            try:
                got, reward, correct, info, error = pickle.loads(self._conn.recv_bytes())
            except (EOFError, ConnectionResetError):
                return self._crash_message()
            if got != index:
                raise VerifierProcessError(f"verifier process for {self.spec!r} answered item {got}, expected {index}")
            verdicts.append((reward, correct, info, error))
        return None

    def _crash_message(self) -> str:
        assert self._proc is not None
        self._proc.join(_REAP_S)  # the pipe closes as the child dies; give it a moment to be reaped
        if self._proc.exitcode is None:  # closed its end of the pipe but lives on: treat as dead
            _kill_group(self._proc)
        return f"crash: {self.kind} process exited with code {self._proc.exitcode}"

    def _start(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_child_main, args=(child_conn, self.spec, self.error_reward, self.loader),
                                 name=f"rlpt-{self.kind}:{self.spec}", daemon=True)
        t0 = time.perf_counter()
        proc.start()
        child_conn.close()  # only the child holds its end now, so its death reads as EOF here
        self._proc, self._conn = proc, parent_conn
        self._poller = select.poll()
        self._poller.register(parent_conn.fileno(), select.POLLIN)
        reason = self._await_ready()
        if reason is not None:
            self._stop(graceful=False)
            raise VerifierProcessError(f"{self.kind} {self.spec!r} failed to start in its worker process: {reason}")
        self.startup_s.append(time.perf_counter() - t0)

    def _await_ready(self) -> str | None:
        """None when the child loaded the verifier, else why it did not."""
        assert self._conn is not None and self._proc is not None
        if not self._conn.poll(self.startup_timeout_s):
            return f"not ready within startup_timeout_s={self.startup_timeout_s}s"
        try:
            kind, payload = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._proc.join(_REAP_S)
            return f"process exited with code {self._proc.exitcode} before loading the verifier"
        return None if kind == _READY else str(payload)

    def _stop(self, graceful: bool) -> None:
        """Optionally ask the child to exit, then SIGKILL its group anyway: that also takes anything it left."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = self._poller = None
        if proc is None or conn is None:
            return
        if graceful and proc.exitcode is None:
            try:
                conn.send(None)
                proc.join(0.5)  # a healthy idle child exits at once; a busy one is killed below
            except (BrokenPipeError, ConnectionResetError):
                pass
        _kill_group(proc)
        conn.close()
        if proc.exitcode is not None:  # Process.close() refuses a live process; a daemon child dies with us
            proc.close()

    def close(self) -> None:
        self._stop(graceful=True)

    def __enter__(self) -> IsolatedScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"IsolatedScorer(spec={self.spec!r}, timeout_s={self.timeout_s}, pid={pid})"
