"""Ray Jobs: submit `rlpt train` to a cluster's job server (the dashboard's HTTP port, 8265 by default), follow its
logs, read its status, stop it. A thin wrapper over `ray.job_submission.JobSubmissionClient` (Ray 2.60) that turns
the SDK's generic errors into messages naming the address or the job id.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

# The SDK lets these env vars override an explicit address; an explicit `--address` must win.
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class JobError(RuntimeError):
    """A job-server problem, with the address or job id in the message."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str
    entrypoint: str
    start_time: float | None  # seconds since the epoch
    end_time: float | None

    @property
    def terminal(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "STOPPED")


def normalize_address(address: str) -> str:
    """`host:port` -> `http://host:port`; no trailing slash."""
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


class JobServer:
    """One cluster's job server. Construction checks that it answers."""

    def __init__(self, address: str) -> None:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        self.address = normalize_address(address)
        saved = {k: os.environ.pop(k) for k in _ADDRESS_ENV if k in os.environ}
        try:
            self.client = JobSubmissionClient(self.address)
        except AuthenticationError as e:  # Ray >= 2.5x clusters may require a token (RAY_AUTH_MODE=token)
            raise JobError(f"the Ray job server at {self.address} refused us: it uses token authentication; set "
                           f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token "
                           f"({str(e).splitlines()[0]})") from None
        except Exception as e:  # ConnectionError, requests errors, or a 404 from something that is not a dashboard
            raise JobError(f"cannot reach the Ray job server at {self.address}: is `ray start --head` running, is "
                           f"the dashboard on that port (8265 by default, not the GCS port 6379)? ({e})") from None
        finally:
            os.environ.update(saved)

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.address}/#/jobs/{job_id}"

    def _call(self, job_id: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as e:
            if "404" in str(e) or "does not exist" in str(e):
                raise JobError(f"no job {job_id!r} on {self.address} (`rlpt jobs list` shows the jobs there)") from None
            raise JobError(f"job {job_id} on {self.address}: {e}") from None
        except OSError as e:  # the server went away between calls
            raise JobError(f"lost the Ray job server at {self.address} ({e})") from None

    def submit(self, entrypoint: str, runtime_env: dict[str, Any], submission_id: str | None = None) -> str:
        """Upload the working dir (if local), start `entrypoint` on the cluster; returns the job id."""
        try:
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                          submission_id=submission_id)
        except (RuntimeError, ValueError, TypeError, OSError) as e:
            raise JobError(f"submitting to {self.address} failed: {e}") from None

    def info(self, job_id: str) -> JobInfo:
        d = self._call(job_id, lambda: self.client.get_job_info(job_id))
        return _info(d)

    def list(self) -> list[JobInfo]:
        return [_info(d) for d in self._call("*", self.client.list_jobs)]

    def logs(self, job_id: str) -> str:
        return self._call(job_id, lambda: self.client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        """True if the job was running (it is asked to exit, then killed after a grace period)."""
        return bool(self._call(job_id, lambda: self.client.stop_job(job_id)))

    def tail_logs(self, job_id: str, write: Callable[[str], None]) -> None:
        """Stream the job's logs (from its start) to `write` until the job ends."""
        self.info(job_id)  # a clear error for an unknown id before opening the websocket

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        self._call(job_id, lambda: asyncio.run(tail()))

    def wait(self, job_id: str, timeout_s: float | None = None, poll_s: float = 0.5) -> JobInfo:
        """Poll until the job is terminal (the log stream can close a moment before the status flips)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (info := self.info(job_id)).terminal:
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {job_id} still {info.status} after {timeout_s}s")
            time.sleep(poll_s)
        return info


def _info(d: Any) -> JobInfo:
    def seconds(ms: Any) -> float | None:
        return None if ms is None else ms / 1000.0

    return JobInfo(job_id=d.submission_id or d.job_id or "?", status=str(d.status), message=d.message or "",
                   entrypoint=d.entrypoint or "", start_time=seconds(d.start_time), end_time=seconds(d.end_time))
