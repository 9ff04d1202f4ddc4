"""Waiting on a group of actor calls without ever hanging: every wait has a deadline, and a call that fails (an
exception in the actor, or the actor process gone) fails the whole wait at once, naming the actor and the phase.

Why "at once" matters: the ranks of a learner group run collectives together. If rank 1 dies, rank 0 blocks inside
a gloo/NCCL collective until that backend's own timeout; waiting for every result before looking at any of them
would turn a dead rank into a silent stall of `timeout_s`. Here the dead rank's result arrives first (Ray reports
the death) and the caller raises immediately.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from rlpt.errors import RunFault


class ActorCallTimeout(RunFault, TimeoutError):
    """Some calls did not finish in time; the message names the actors and the phase."""


class ActorLost(RunFault):
    """An actor died (process killed, node lost) while the caller waited on it; the message names it."""


def gather(what: str, refs: Sequence[Any], labels: Sequence[str], timeout_s: float,
           arrivals: dict[str, float] | None = None) -> list[Any]:
    """Results of `refs` in order. Raises ActorLost (naming the actor) or the actor's own exception as soon as one
    call fails, and ActorCallTimeout naming the unfinished ones after `timeout_s`. `arrivals`, when given, gets
    each label's seconds from the call to its result (start-up reports which actor was the slowest)."""
    import ray
    from ray.exceptions import RayActorError

    refs = list(refs)
    index = {r: i for i, r in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    start = time.monotonic()
    deadline = start + timeout_s
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            late = ", ".join(labels[index[r]] for r in pending)
            raise ActorCallTimeout(f"{what}: {late} did not finish within {timeout_s}s")
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        for ref in done:
            i = index[ref]
            if arrivals is not None:
                arrivals[labels[i]] = time.monotonic() - start
            try:
                results[i] = ray.get(ref)
            except RayActorError as e:  # an exception raised inside the actor propagates as it is (RayTaskError)
                raise ActorLost(f"{what}: {labels[i]} died ({type(e).__name__}: {first_line(e)})") from None
    return results


def settle(refs: Sequence[Any], timeout_s: float) -> bool:
    """Wait (bounded) for calls that may fail, e.g. the rest of a broken collective, ignoring their exceptions.
    False if one's actor died or one is still running after `timeout_s`."""
    import ray
    from ray.exceptions import RayActorError

    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in done:
        try:
            ray.get(ref)
        except RayActorError:
            return False
        except Exception:  # noqa: BLE001 - the failure the caller is cleaning up after: expected here
            pass
    return not pending


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
