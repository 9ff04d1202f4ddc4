"""The code sandbox (rlpt/sandbox.py): each adversarial program is stopped with its own status, and afterwards the
machine is as before: no process of the sandbox uid, no file outside, the caller's memory and children unchanged.

Limits are small here (1 s CPU, 2 s wall) so the slow cases take ~2 s each. Root-only checks (the uid drop and
what rests on it) are skipped when the tests do not run as root.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from rlpt.sandbox import UID_RANGE, SandboxLimits, SandboxResult, run_python

pytestmark = pytest.mark.unit

LIMITS = SandboxLimits(wall_s=2.0, cpu_s=1, memory_mb=256, file_size_bytes=64 << 10, max_processes=8)
ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="the uid drop needs root")


def procs_of(uids) -> list[int]:
    """Processes (zombies included) whose real uid is in `uids` (also used by tests/ray/test_code_sandbox.py)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid_line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) in uids:
            found.append(int(pid))
    return found


def our_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]


def run(code: str, limits: SandboxLimits = LIMITS, **kw: str) -> SandboxResult:
    """run_python, then check the machine is unharmed: nothing of the sandbox is left running."""
    result = run_python(code, limits=limits, **kw)
    if result.uid is not None:
        assert result.uid in UID_RANGE and procs_of({result.uid}) == [], result
    assert our_children() == []
    return result


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# ---- ordinary programs ----------------------------------------------------------------------------------------
def test_ok_program_runs_with_stdlib_and_stdin() -> None:
    r = run("import math, json, collections\nname = input()\nprint(json.dumps({name: math.factorial(5)}))",
            stdin="five\n")
    assert (r.status, r.exit_code, r.signal, r.stdout, r.stderr) == ("ok", 0, None, '{"five": 120}\n', "")
    assert not r.violation and r.wall_s < 2.0


@pytest.mark.parametrize(("code", "last_line"), [
    ("assert 1 + 1 == 3", "AssertionError"),
    ("def f(:\n  pass", "SyntaxError: invalid syntax"),
    ("raise ValueError('bad input')", "ValueError: bad input"),
    ("import sys; sys.exit(102)", ""),  # 102 is the sandbox's 'network' code: sys.exit cannot claim it
])
def test_failing_programs_are_failed_not_violations(code: str, last_line: str) -> None:
    r = run(code)
    assert (r.status, r.exit_code, r.violation) == ("failed", 1, False)
    assert (r.stderr.strip().splitlines() or [""])[-1] == last_line


def test_environment_is_scrubbed_and_directory_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLPT_TEST_SECRET", "hunter2")
    r = run("import os, sys\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'] == "
            "os.environ['TMPDIR'])\nprint(os.getcwd())\nprint(sys.path[0].startswith('/proc/self/fd/'))\n"
            "open('mine.txt', 'w').write('inside is fine')\nprint(open('mine.txt').read())")
    lines = r.stdout.splitlines()
    assert r.status == "ok", r.stderr
    assert lines[0] == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']" and "hunter2" not in r.stdout
    assert lines[1] == "True" and lines[4] == "inside is fine"
    workdir = Path(lines[2])
    assert workdir.name == "work" and not workdir.parent.exists()  # the whole sandbox directory is gone


@root_only
def test_runs_as_unprivileged_uid_without_access_to_root_files() -> None:
    r = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\nopen('/root/.profile').read()")
    assert r.stdout.split() == [str(r.uid), str(r.uid), "[]"] and r.uid in UID_RANGE
    assert r.status == "failed" and "PermissionError" in r.stderr


def test_concurrent_sandboxes_get_distinct_uids() -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_python("import time; time.sleep(0.5)", limits=LIMITS), range(3)))
    assert [r.status for r in results] == ["ok"] * 3
    if ROOT:
        assert len({r.uid for r in results}) == 3


# ---- time -----------------------------------------------------------------------------------------------------
def test_infinite_loop_stopped_by_cpu_limit() -> None:
    r = run("while True:\n    pass", SandboxLimits(wall_s=10.0, cpu_s=1))
    assert (r.status, r.signal, r.violation) == ("cpu", 24, True)  # SIGXCPU
    assert 0.9 <= r.cpu_s <= 2.5 and r.wall_s < 9.0


def test_sleep_past_the_wall_limit_is_a_timeout() -> None:
    r = run("import time\ntime.sleep(100)")
    assert (r.status, r.exit_code, r.violation) == ("timeout", None, True)
    assert LIMITS.wall_s <= r.wall_s < LIMITS.wall_s + 1.0


def test_timeout_kills_children_that_ignore_sigterm_and_left_the_group() -> None:
    code = ("import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "if os.fork() == 0:\n    os.setsid()\n    print(os.getpid(), flush=True)\n    time.sleep(100)\n"
            "time.sleep(100)")
    r = run(code)
    assert r.status == "timeout"
    assert gone(int(r.stdout.split()[0]))


def test_daemon_left_behind_by_a_finished_program_is_killed() -> None:
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        print(os.getpid(), flush=True)\n        time.sleep(100)\n    os._exit(0)\n"
            "os.wait()\ntime.sleep(0.2)")
    r = run(code)
    assert r.status == "ok"
    assert gone(int(r.stdout.split()[0]))


# ---- memory, processes, files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["x = bytearray(2 << 30)", "xs = []\nwhile True:\n    xs.append(' ' * (1 << 20))"])
def test_memory_bomb_is_memory(code: str) -> None:
    rss = psutil.Process().memory_info().rss
    r = run(code)
    assert (r.status, r.violation) == ("memory", True) and "MemoryError" in r.stderr
    assert psutil.Process().memory_info().rss - rss < 50 << 20  # the caller did not pay for it


def test_fork_bomb_is_fork_and_leaves_nothing() -> None:
    r = run("import os\nwhile True:\n    os.fork()")
    assert (r.status, r.violation) == ("fork", True) and "BlockingIOError" in r.stderr


@root_only
def test_process_limit_holds_even_when_fork_errors_are_swallowed() -> None:
    # Bounded: 10000 attempts. Children sleep; the parent reports how many forks succeeded, then exits.
    code = ("import os, time\nmade = 0\nfor _ in range(10000):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        continue\n    if pid == 0:\n        time.sleep(100)\n    made += 1\n"
            "print(made)")
    r = run(code)
    assert r.status == "ok"
    assert int(r.stdout) == LIMITS.max_processes - 1  # the parent itself is the 8th process


def test_threads_count_against_the_process_limit() -> None:
    r = run("import threading, time\nfor _ in range(100):\n    threading.Thread(target=time.sleep, args=(1,)).start()")
    assert r.status == "fork"


def test_output_past_the_file_size_limit() -> None:
    r = run("print('x' * (1 << 20))")
    assert (r.status, r.signal) == ("file_size", 25)  # SIGXFSZ
    assert len(r.stdout) <= LIMITS.max_output_chars + 100


@pytest.mark.parametrize("how", ["open({p!r}, 'w').write('x')", "import os; os.mkdir({p!r})",
                                 "import pathlib; pathlib.Path({p!r}).touch()"])
def test_write_to_tmp_is_write_outside(how: str) -> None:
    target = Path("/tmp") / f"rlpt-sandbox-test-{uuid.uuid4().hex}"
    r = run(how.format(p=str(target)))
    assert (r.status, r.violation) == ("write_outside", True) and str(target) in r.detail
    assert not target.exists()


def test_write_next_to_the_sandbox_directory_is_write_outside() -> None:
    r = run("import os\nprint(os.getcwd(), flush=True)\nopen('../escape.txt', 'w').write('x')")
    assert r.status == "write_outside"
    assert not (Path(r.stdout.strip()).parent / "escape.txt").exists()


@root_only
def test_write_the_audit_hook_does_not_see_is_still_caught_and_removed() -> None:
    target = Path("/tmp") / f"rlpt-sandbox-fifo-{uuid.uuid4().hex}"
    r = run(f"import os\nos.mkfifo({str(target)!r})")  # no audit event: the post-run sweep finds it
    assert (r.exit_code, r.status) == (0, "write_outside") and str(target) in r.detail
    assert not target.exists()


def test_subprocess_and_ctypes_are_forbidden() -> None:
    assert run("import subprocess\nsubprocess.run(['true'])").status == "forbidden"
    assert run("import os\nos.system('true')").status == "forbidden"
    assert run("import ctypes").status == "forbidden"


# ---- network ----------------------------------------------------------------------------------------------------
def test_socket_connect_is_network_and_the_server_sees_nothing() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r = run(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'hi')")
        assert (r.status, r.violation) == ("network", True) and "socket" in r.detail
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_network_namespace_has_only_loopback() -> None:
    r = run("print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').read().splitlines()[2:]))")
    if not r.net_isolated:
        pytest.skip("no network namespace here: only the audit hook blocks sockets")
    assert r.stdout.strip() == "['lo']"


def test_caller_is_unharmed_after_everything() -> None:
    assert threading.active_count() >= 1 and our_children() == []
    assert run("print(6 * 7)").stdout == "42\n"
