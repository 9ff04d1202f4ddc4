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

Cost (measured on the 2-core CPU dev box, `spawn`, 2000 rollouts of 1000 tokens, verifiers "exact" and the
test plug-in "tests.unit.isolation_fixture:ok"): starting a child takes ~2-2.7 s, almost all of it importing
torch (rlpt.types) and rlpt.verifiers; it is paid once per IsolatedScorer and again after each timeout or crash.
Per item the round trip (pickle, pipe, score_rollout, pipe, unpickle) adds ~65-145 us over calling the verifier
in-process (~5 us). Token ids and logprobs are not sent (the verifier never sees them), so the cost does not
grow with response length. Items go one at a time: at this overhead pipelining would gain little, and one item
in flight keeps "which item hung" unambiguous.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Sequence

from rlpt.scoring import score_rollout
from rlpt.types import Rollout, ScoredRollout

_READY = "ready"
_LOAD_ERROR = "load_error"
_REAP_S = 5.0  # how long to wait for a killed or exiting child before giving up on its exit code


class VerifierProcessError(RuntimeError):
    """The verifier process could not be started or kept running; the message says which verifier and why."""


def _child_main(conn: Connection, spec: str, error_reward: float) -> None:
    """Entry point of the verifier process: load once, then score (index, rollout) messages until None/EOF."""
    os.setsid()  # own process group: the parent's killpg then also reaches whatever the verifier spawns
    try:
        from rlpt.verifiers import load_verifier  # here, not at top level: only the child pays for it

        verify = load_verifier(spec)
    except BaseException as e:  # noqa: BLE001 - any load failure (even SystemExit at import) is reported
        conn.send((_LOAD_ERROR, f"{type(e).__name__}: {e}"))
        return
    conn.send((_READY, os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent went away
            return
        if msg is None:
            return
        index, rollout = msg
        s = score_rollout(verify, rollout, error_reward)
        try:
            conn.send((index, s.reward, s.correct, s.info, s.error))
        except Exception as e:  # noqa: BLE001 - e.g. unpicklable info: pickling fails before anything is written
            conn.send((index, error_reward, None, {}, f"{type(e).__name__}: verifier result cannot be sent: {e}"))


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
    """Scores rollouts with `load_verifier(verifier_spec)` running in a child process, `timeout_s` per item."""

    def __init__(self, verifier_spec: str, timeout_s: float, error_reward: float, start_method: str = "spawn",
                 startup_timeout_s: float = 120.0, max_restarts: int = 32) -> None:
        if timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError(f"timeout_s and startup_timeout_s must be > 0, got {timeout_s}, {startup_timeout_s}")
        self.spec = verifier_spec
        self.timeout_s = timeout_s
        self.error_reward = error_reward
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts  # per score() call: beyond that the verifier or timeout is wrong
        self.startup_s: list[float] = []  # seconds each child took to become ready, for metrics and tests
        self._ctx = mp.get_context(start_method)
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._start()  # eagerly, so a bad spec fails at construction rather than at the first batch

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        """One ScoredRollout per rollout, in order; a hang or crash marks that item only."""
        results: list[ScoredRollout] = []
        failures: list[str] = []
        for index, rollout in enumerate(rollouts):
            if self._proc is None:
                self._start()  # lazily after a failure, so a batch ending in a failure costs no spare start
            try:
                scored, failed = self._score_one(index, rollout)
            except BaseException:
                self._stop(graceful=False)  # e.g. KeyboardInterrupt mid-item: the pipe state is unknown
                raise
            results.append(scored)
            if failed:
                failures.append(str(scored.error))
                self._stop(graceful=False)
                if len(failures) > self.max_restarts:
                    raise VerifierProcessError(
                        f"verifier {self.spec!r} timed out or crashed on {len(failures)} of the first {index + 1} "
                        f"items of a batch of {len(rollouts)} (max_restarts={self.max_restarts}); "
                        f"first: {failures[0]!r}. Fix the verifier or raise timeout_s / max_restarts.")
        return results

    def _score_one(self, index: int, rollout: Rollout) -> tuple[ScoredRollout, bool]:
        """The scored rollout, and whether the child hung or died on it (and must be replaced)."""
        assert self._conn is not None
        # The verifier sees (prompt, text) only: token ids and logprobs would just be pickled for nothing.
        light = dataclasses.replace(rollout, response_ids_T=(), logprobs_T=())
        try:
            self._conn.send((index, light))
        except (BrokenPipeError, ConnectionResetError):
            return self._failed(rollout, self._crash_message()), True
        if not self._conn.poll(self.timeout_s):
            return self._failed(rollout, f"timeout: verifier {self.spec} took longer than {self.timeout_s}s"), True
        try:
            got, reward, correct, info, error = self._conn.recv()
        except (EOFError, ConnectionResetError):
            return self._failed(rollout, self._crash_message()), True
        if got != index:
            raise VerifierProcessError(f"verifier process for {self.spec!r} answered item {got}, expected {index}")
        return ScoredRollout(rollout, reward=reward, correct=correct, info=info, error=error), False

    def _failed(self, rollout: Rollout, error: str) -> ScoredRollout:
        return ScoredRollout(rollout, reward=self.error_reward, correct=None, error=error)

    def _crash_message(self) -> str:
        assert self._proc is not None
        self._proc.join(_REAP_S)  # the pipe closes as the child dies; give it a moment to be reaped
        if self._proc.exitcode is None:  # closed its end of the pipe but lives on: treat as dead
            _kill_group(self._proc)
        return f"crash: verifier process exited with code {self._proc.exitcode}"

    def _start(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_child_main, args=(child_conn, self.spec, self.error_reward),
                                 name=f"rlpt-verifier:{self.spec}", daemon=True)
        t0 = time.perf_counter()
        proc.start()
        child_conn.close()  # only the child holds its end now, so its death reads as EOF here
        self._proc, self._conn = proc, parent_conn
        reason = self._await_ready()
        if reason is not None:
            self._stop(graceful=False)
            raise VerifierProcessError(f"verifier {self.spec!r} failed to start in its worker process: {reason}")
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
        self._proc = self._conn = None
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
