"""Where third-party output goes: with `run.log_level: quiet` (the default) every actor process sends its stdout
and stderr (file descriptors 1 and 2, so vLLM's, DeepSpeed's, transformers' and Ray's own lines, Python or C++) to
`<run dir>/logs/<actor>.log`, and the driver does not stream actor output to the console; the console keeps
rlpt's progress bar and its one-line `[rlpt]` events. `verbose` leaves Ray's streaming on (everything live)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def redirect_output(log_dir: str | None, name: str) -> None:
    """Send this process's fds 1 and 2 to `<log_dir>/<name>.log` (appending). No-op without a log dir, or where the
    run directory is not writable from this node (Ray's own per-worker log files then keep the output)."""
    if log_dir is None:
        return
    path = Path(log_dir) / f"{name.replace('/', '_')}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        print(f"[rlpt] {name}: cannot write {path} ({e}); its output stays in Ray's log files", file=sys.stderr)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
