"""Run untrusted (model-generated) Python in a sandbox: `run_python(code, limits=...) -> SandboxResult`.

Layout. The caller starts a *supervisor* (`python -I -S -B rlpt/sandbox.py CONFIG`, stdlib only, in a new session,
with a scrubbed environment: PATH, LANG, HOME=TMPDIR=the sandbox directory). The supervisor makes itself a child
subreaper (every orphan of the sandbox is re-parented to it, not to init), enters fresh network and IPC namespaces,
and forks the *worker*, which sets the limits, drops privileges, installs an audit hook and `exec`s the code with
cwd = a fresh private directory. At exit or at the wall deadline the supervisor SIGKILLs every descendant (and, as
root, every process of the sandbox uid), reaps them all and reports one JSON line; the caller then removes the
directory and sorts the outcome into a `Status`.

Guarantees as root (the dev box and the usual Ray container), each checked by tests/unit/test_sandbox.py:
- wall time: everything the code started is SIGKILLed at `wall_s`, also processes that ignore SIGTERM or `setsid`;
- RLIMIT_CPU / AS / FSIZE / NOFILE / CORE=0 per process (stdout and stderr are files: they count against FSIZE);
- a private unprivileged uid per concurrent sandbox (a flock'd lease in `UID_RANGE`, env RLPT_SANDBOX_UIDS="lo-hi"),
  so RLIMIT_NPROC bounds the processes *and threads* of this sandbox alone, file permissions apply (no writes outside
  world-writable dirs, no reading root's files), and `kill(-1)` from a helper running as that uid reaches exactly
  this sandbox's processes; no_new_privs, so no setuid binary regains privileges;
- no network: a fresh network namespace has only a down loopback (also no abstract unix sockets, no SysV IPC).
  Needs CAP_SYS_ADMIN (present on the dev box; Docker's default profile drops it): where unshare fails,
  `SandboxResult.net_isolated` is False and only the audit hook blocks sockets;
- after the run, files the uid left at the top of /tmp, /var/tmp, /dev/shm, /run/lock are removed and
  the run is reported as `write_outside` (the kernel-level check behind the audit hook).
Defence in depth, not a boundary: an audit hook (PEP 578) in the worker exits at once, with a distinct status, on
any socket, on writes / mkdir / rename / remove outside the directory, on `open` of an outside directory (a dir fd
could serve as `dir_fd`), on exec / spawn / `os.system` / `subprocess`, and on ctypes. Python code can subvert
its own hook (it shares the interpreter), so the checks above, not the hook, are what hold. The code may also
*claim* a violation by `os._exit(<reserved code>)`: that only ever turns its own result into an error row.

Not root: no uid change, so RLIMIT_NPROC counts all of the user's threads (set to their count + max_processes,
racy) and files are writable wherever the user can write (only the hook stands in the way, no post-run sweep).
Killing stays complete: orphans still land in the subreaper, which kills its whole tree. The network namespace
needs an unprivileged user namespace (CLONE_NEWUSER); where that is refused, only the hook blocks sockets
(`SandboxResult.net_isolated` says which). Stdlib only: the worker has no site-packages.

If the supervisor itself is killed (or hangs past wall_s + 3 s and the caller kills it), the uid's processes are
still killed from the caller, but their zombies go to init, which on some containers never reaps them: the lease
then skips that uid. Cost: ~0.1 s per run on the 2-core dev box (one interpreter start, one fork per clean-up).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Literal, NoReturn

Status = Literal["ok", "failed", "killed", "timeout", "cpu", "memory", "fork", "file_size", "write_outside",
                 "network", "forbidden"]
# Statuses that mean "the sandbox stopped the program" (an error row), as opposed to "the program ran and
# succeeded / failed / died by its own signal" (a normal verdict).
VIOLATIONS: frozenset[str] = frozenset({"timeout", "cpu", "memory", "fork", "file_size", "write_outside", "network",
                                        "forbidden"})
UID_RANGE = range(50000, 51000)  # must be unused on the machine: uids with a passwd entry are skipped
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_CODES = {"write_outside": 101, "network": 102, "forbidden": 103, "memory": 104, "fork": 105, "file_size": 106}
_SETUP_FAILED = 107
_MARK = "rlpt-sandbox: "
_GRACE_S = 3.0  # beyond wall_s, how long the caller waits for the supervisor's report before killing it
_POLL_S = 0.01
_PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 4, 38, 36
_CLONE_NEWUSER, _CLONE_NEWIPC, _CLONE_NEWNET = 0x10000000, 0x08000000, 0x40000000


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 512  # address space (RLIMIT_AS) per process
    file_size_bytes: int = 1 << 20  # per file, stdout and stderr included
    max_processes: int = 16  # processes + threads of the sandbox uid (as root)
    max_open_files: int = 64
    max_output_chars: int = 4000  # stdout / stderr kept in the result (head and tail)


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    exit_code: int | None  # None when killed by a signal or at the deadline
    signal: int | None
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    detail: str  # why, in words
    net_isolated: bool  # whether a fresh network namespace was in place (else only the audit hook)
    uid: int | None  # the unprivileged uid it ran as; None when the caller is not root

    @property
    def violation(self) -> bool:
        return self.status in VIOLATIONS


class SandboxError(RuntimeError):
    """The sandbox itself could not run (no free uid, unsafe lock dir, supervisor failure): not the code's fault."""


class SandboxViolation(RuntimeError):
    """Raised by verifiers for a violation; the message starts with the status ("memory: ...")."""


def run_python(code: str, *, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a Python program in the sandbox (see the module docstring); never raises for what the code
    does, only SandboxError when the sandbox cannot run."""
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        uid, lock_fd = stack.enter_context(_uid_lease()) if os.geteuid() == 0 else (None, None)
        base = tempfile.mkdtemp(prefix="rlpt-sandbox-")
        stack.callback(shutil.rmtree, base, True)
        os.chmod(base, 0o711)  # the uid may pass through to work/, not list or read the rest
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if uid is not None:
            os.chown(work, uid, uid)
        with open(os.path.join(base, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        fds = {name: os.open(os.path.join(base, name), os.O_RDWR | os.O_CREAT, 0o600) for name in ("in", "out", "err")}
        for fd in fds.values():
            stack.callback(os.close, fd)
        os.write(fds["in"], stdin.encode())
        os.lseek(fds["in"], 0, os.SEEK_SET)
        nproc = limits.max_processes if uid is not None else _threads_of(os.getuid()) + limits.max_processes
        cfg = {"uid": uid, "work": work, "code": os.path.join(base, "solution.py"), "fds": fds,
               "limits": asdict(limits), "nproc": nproc}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": work, "TMPDIR": work}
        # -I implies -P (3.11+): the script's own dir (rlpt/, which has a types.py) is not put on sys.path.
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(cfg)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=base, start_new_session=True,
                                pass_fds=[*fds.values(), *([lock_fd] if lock_fd is not None else [])])
        try:
            out, err = proc.communicate(timeout=limits.wall_s + _GRACE_S)
        except subprocess.TimeoutExpired:  # the supervisor itself is stuck: take everything down from here
            _hard_kill(proc, uid)
            out, err = b'{"timed_out": true, "exit": null, "signal": null, "cpu_s": 0, "net_isolated": false}', b""
        text = out.decode(errors="replace").strip()
        if proc.returncode not in (0, -signal.SIGKILL) or not text:
            raise SandboxError(f"sandbox supervisor exited with {proc.returncode}: "
                               f"{err.decode(errors='replace')[-2000:]}")
        report = json.loads(text)
        left = _sweep_world_writable(uid) if uid is not None else []
        stdout, stderr = (_read(fds[k], limits) for k in ("out", "err"))
    status, detail = _classify(report, limits, stderr, left)
    return SandboxResult(status, report["exit"], report["signal"], stdout, stderr, time.monotonic() - t0,
                         float(report["cpu_s"]), detail, bool(report["net_isolated"]), uid)


def _classify(report: dict[str, Any], limits: SandboxLimits, stderr: str, left: list[str]) -> tuple[Status, str]:
    if left:
        return "write_outside", f"left files in world-writable dirs (removed): {', '.join(left)[:300]}"
    if report["timed_out"]:
        return "timeout", f"still running after {limits.wall_s}s wall; killed with every process it started"
    sig, code = report["signal"], report["exit"]
    if sig is not None:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and report["cpu_s"] >= limits.cpu_s - 0.05):
            return "cpu", f"used {report['cpu_s']:.2f}s CPU (limit {limits.cpu_s}s)"
        if sig == signal.SIGXFSZ:
            return "file_size", f"wrote past {limits.file_size_bytes} bytes to a file (stdout/stderr included)"
        return "killed", f"killed by {signal.Signals(sig).name}"
    if code == _SETUP_FAILED:
        raise SandboxError(f"sandbox worker setup failed: {stderr[-2000:]}")
    marks = [line[len(_MARK):] for line in stderr.splitlines() if line.startswith(_MARK)]
    why = {"memory": f"MemoryError at the {limits.memory_mb} MiB address-space limit",
           "fork": f"fork/thread refused (EAGAIN) at the {limits.max_processes} process limit",
           "file_size": f"a file grew past {limits.file_size_bytes} bytes"}
    for status, reserved in _CODES.items():
        if code == reserved:
            return status, (marks[-1] if marks else why.get(status, f"exit code {code}"))[:300]  # type: ignore
    return ("ok", "") if code == 0 else ("failed", f"exit code {code}")


def _read(fd: int, limits: SandboxLimits) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, limits.file_size_bytes + 1).decode(errors="replace")
    n = limits.max_output_chars
    return text if len(text) <= n else f"{text[:n // 2]}\n...[{len(text) - n} chars cut]...\n{text[-(n // 2):]}"


# ---------------------------------------------------------------------------------------------- uid bookkeeping
def _uid_range() -> range:
    spec = os.environ.get("RLPT_SANDBOX_UIDS")
    if not spec:
        return UID_RANGE
    lo, _, hi = spec.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi)):
        raise SandboxError(f"RLPT_SANDBOX_UIDS={spec!r}: expected 'lo-hi' with 0 < lo <= hi")
    return range(int(lo), int(hi) + 1)


@contextlib.contextmanager
def _uid_lease() -> Iterator[tuple[int, int]]:
    """An unprivileged uid no other sandbox holds (flock on <tmp>/rlpt-sandbox-locks-0/<uid>), with no process
    left; the lock fd also goes to the supervisor, so the lease outlives a caller that dies mid-run."""
    lock_dir = os.path.join(tempfile.gettempdir(), f"rlpt-sandbox-locks-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(lock_dir, 0o700)
    st = os.lstat(lock_dir)
    if not os.path.isdir(lock_dir) or os.path.islink(lock_dir) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SandboxError(f"{lock_dir} must be a directory owned by uid {os.geteuid()} with mode 0700; remove it")
    uids = _uid_range()
    start = random.randrange(len(uids))  # spread concurrent callers over the range
    for k in range(len(uids)):
        uid = uids[(start + k) % len(uids)]
        with contextlib.suppress(KeyError):
            pwd.getpwuid(uid)
            continue  # a real account: never ours to kill
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if _processes_of(uid):  # left by a sandbox whose supervisor was killed: kill; skip if zombies stay
                _kill_uid(uid)
                time.sleep(0.05)
                if _processes_of(uid):
                    continue
            yield uid, fd
            return
        finally:
            os.close(fd)
    raise SandboxError(f"no free sandbox uid in {uids} (locks in {lock_dir}): too many concurrent sandboxes")


def _proc_status(pid: str) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)


def _processes_of(uid: int) -> list[int]:
    """Live or zombie processes whose real uid is `uid`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(_proc_status(pid)["Uid"].split()[0]) == uid:
                found.append(int(pid))
    return found


def _threads_of(uid: int) -> int:
    n = 0
    for pid in _processes_of(uid):
        with contextlib.suppress(OSError, KeyError):
            n += int(_proc_status(str(pid))["Threads"])
    return n


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`: a forked helper drops to that uid first, so kill(-1) reaches exactly them."""
    if uid <= 0:
        raise ValueError(f"refusing to kill the processes of uid {uid}")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() == uid and os.geteuid() == uid:  # never kill(-1) with privileges left
                os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _hard_kill(proc: subprocess.Popen[bytes], uid: int | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    if uid is not None:
        _kill_uid(uid)  # orphans go to init now (which may never reap them): the lease skips a uid with zombies


def _sweep_world_writable(uid: int) -> list[str]:
    """Remove what `uid` left in the world-writable dirs; the paths removed."""
    removed = []
    for d in dict.fromkeys((*WORLD_WRITABLE, tempfile.gettempdir())):
        with contextlib.suppress(OSError):
            for entry in os.scandir(d):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            os.unlink(entry.path)
                        removed.append(entry.path)
    return removed


# ---------------------------------------------------------------------------- supervisor (runs as __main__)
def _libc() -> Any:
    import ctypes  # here: the library itself never needs it; the worker forgets it before the user code runs

    return ctypes.CDLL(None, use_errno=True)


def _supervise(cfg: dict[str, Any]) -> dict[str, Any]:
    libc = _libc()
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    flags = _CLONE_NEWNET | _CLONE_NEWIPC | (0 if cfg["uid"] is not None else _CLONE_NEWUSER)
    net_isolated = libc.unshare(flags) == 0
    with open(cfg["code"], encoding="utf-8") as f:
        code = f.read()
    sys.stdout.flush()
    deadline = time.monotonic() + cfg["limits"]["wall_s"]
    worker = os.fork()
    if worker == 0:  # pragma: no cover - child
        _worker(cfg, code, libc)
    status, cpu_s = None, 0.0
    while status is None and time.monotonic() < deadline:
        got, st, ru = os.wait4(-1, os.WNOHANG)  # also reaps orphans as they die, so they do not pile up
        if got == worker:
            status, cpu_s = st, ru.ru_utime + ru.ru_stime
        elif got == 0:
            time.sleep(_POLL_S)
    if status is None:
        cpu_s = _cpu_s(worker)
    _kill_descendants(cfg["uid"])
    return {"timed_out": status is None, "cpu_s": cpu_s, "net_isolated": net_isolated,
            "exit": os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None}


def _cpu_s(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _kill_descendants(uid: int | None) -> None:
    """SIGKILL and reap every descendant (orphans are ours too: subreaper) until none is left."""
    me = os.getpid()
    for _ in range(1000):  # each round kills a whole generation; fork bombs are bounded by RLIMIT_NPROC
        if uid is not None:
            _kill_uid(uid)
        parents: dict[int, int] = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                    parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        for pid, ppid in parents.items():
            if ppid == me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(_POLL_S)


def _worker(cfg: dict[str, Any], code: str, libc: Any) -> NoReturn:  # pragma: no cover - runs in the child
    try:
        for target, name in enumerate(("in", "out", "err")):
            os.dup2(cfg["fds"][name], target)
        for fd in [int(x) for x in os.listdir("/proc/self/fd") if int(x) > 2]:  # the lease, the report pipe...
            with contextlib.suppress(OSError):
                os.close(fd)
        # The interpreter may live where the uid cannot read (e.g. /root/.pyenv): import through fds opened now.
        _import_through_fds()
        os.nice(10)
        lim = cfg["limits"]
        for res, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                           (resource.RLIMIT_FSIZE, lim["file_size_bytes"]),
                           (resource.RLIMIT_AS, lim["memory_mb"] << 20), (resource.RLIMIT_NPROC, cfg["nproc"])):
            resource.setrlimit(res, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))  # SIGXCPU, then SIGKILL
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default kills: status file_size
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
            libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # reset by setuid; /proc/self/fd needs it
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
        os.chdir(cfg["work"])
        for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
            del sys.modules[name]
        sys.stdout.reconfigure(line_buffering=True)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"{_MARK}setup failed: {e!r}\n".encode())
        os._exit(_SETUP_FAILED)
    _install_audit_hook(cfg["work"])
    os._exit(_run_user_code(code))


def _import_through_fds() -> None:  # pragma: no cover - runs in the child
    """The interpreter may live where the sandbox uid cannot read (e.g. /root/.pyenv): keep importing through
    directory fds opened while still privileged (/proc/self/fd/N/... checks permissions below N only)."""
    fds = {p: f"/proc/self/fd/{os.open(p, os.O_RDONLY | os.O_DIRECTORY)}" for p in sys.path if os.path.isdir(p)}

    def remap(path: str) -> str:
        for d, fd in fds.items():
            if path == d or path.startswith(d + os.sep):
                return fd + path[len(d):]
        return path

    sys.path[:] = list(fds.values())
    for module in list(sys.modules.values()):  # packages already imported (encodings, json...) keep their __path__
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [remap(p) for p in module.__path__]
    sys.path_importer_cache.clear()


def _run_user_code(code: str) -> int:  # pragma: no cover - runs in the child
    import builtins
    import linecache
    import traceback

    linecache.cache["<solution>"] = (len(code), None, code.splitlines(True), "<solution>")
    try:
        exec(compile(code, "<solution>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        rc = 0
    except MemoryError:
        os.write(2, b"MemoryError\n")  # no allocation: memory is what ran out
        return _CODES["memory"]
    except SystemExit as e:
        rc = 0 if e.code is None else e.code & 0xFF if isinstance(e.code, int) else 1
        rc = 1 if rc in _CODES.values() or rc == _SETUP_FAILED else rc  # sys.exit cannot claim a status
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # noqa: BLE001
        with contextlib.suppress(BaseException):
            traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)
        if isinstance(e, BlockingIOError) or (isinstance(e, RuntimeError) and "can't start new thread" in str(e)):
            return _CODES["fork"]  # EAGAIN from fork/clone: RLIMIT_NPROC reached
        if isinstance(e, OSError) and e.errno == errno.EFBIG:
            return _CODES["file_size"]
        return 1
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    return rc


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
                "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "sqlite3.connect": (0,)}
_EXEC_EVENTS = frozenset({"os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.forkpty", "subprocess.Popen"})
_HARMLESS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", ":memory:"})


def _install_audit_hook(work: str) -> None:  # pragma: no cover - runs in the child
    root = os.path.realpath(work)

    def inside(path: object) -> bool:
        if isinstance(path, int):
            return True  # an fd the code already holds
        try:
            p = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
        except TypeError:
            return False
        if p in _HARMLESS:
            return True
        real = os.path.realpath(p)
        return real == root or real.startswith(root + os.sep)

    def deny(kind: str, event: str, args: tuple[Any, ...]) -> NoReturn:
        with contextlib.suppress(BaseException):
            os.write(2, f"\n{_MARK}{kind}: {event} {args!r:.200}\n".encode())
        os._exit(_CODES[kind])

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if not inside(path) and (flags & _WRITE_FLAGS or (mode is None and os.path.isdir(path))):
                deny("write_outside", event, args)
        elif event in _PATH_EVENTS:
            if not all(inside(args[i]) for i in _PATH_EVENTS[event]):
                deny("write_outside", event, args)
        elif event.startswith("socket."):
            deny("network", event, args)
        elif event in _EXEC_EVENTS or event.startswith("ctypes."):
            deny("forbidden", event, args)

    sys.addaudithook(hook)


if __name__ == "__main__":
    print(json.dumps(_supervise(json.loads(sys.argv[1]))), flush=True)
