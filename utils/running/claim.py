"""Claiming a name before writing under it: one owner at a time, and never a run and a sweep under one name.

A run folder ``<notebook>/<name>/`` (or a sweep's ``<notebook>/<sweep>/``) is guarded by a lock file
beside it, ``<notebook>/.<name>.lock``: an exclusive ``flock`` held for as long as its owner runs (the
runner of a single run, the driver of a sweep, the runner of one run of a sweep for
``<notebook>/<sweep>/.<key>.lock``, or a kernel that owns its staging folder when a notebook runs
outside the runner). The operating system releases the lock when the owner dies, however it dies, so a
killed owner never blocks the name; a second owner is refused at once with the first one's pid
(:class:`AlreadyRunning`). The lock file holds the owner's pid, host and what it runs, and is removed
when the lock is released normally.

Under the lock, :func:`claim_run` refuses a run whose name is a sweep's folder (and a sweep refuses a
name a single run has, :func:`claim_group`), removes staging folders whose owner is dead (the lock is
free, so no live owner has one; a stage whose recorded owner is a live process on this host is kept),
and makes a fresh staging folder that records its owner.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import stage_dir_for
from ..provenance import utc_now
from .paths import RunRefused, make_folder

OWNER = ".owner.json"  # in a staging folder: who made it
ATTEMPTS = ("failed", "interrupted")  # kept attempts of a run: <name>.failed/, <name>.interrupted/
_HELD: dict[str, FolderLock] = {}  # the locks this process holds, by path


class AlreadyRunning(RunRefused):
    """Another live process holds the name."""


class NameClash(RunRefused):
    """A single run and a sweep would share a name."""


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs on this host (a zombie waiting to be reaped counts as ended)."""
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError, ValueError, TypeError):
        return False


class FolderLock:
    """The lock of ``folder`` (module docstring): ``<parent>/.<name>.lock``; ``what`` says who holds it."""

    def __init__(self, folder: Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self.what = what
        self.fd: int | None = None

    def acquire(self, takeover: bool = False) -> FolderLock:
        """Take the lock, or :class:`AlreadyRunning` naming the holder. ``takeover``: a lock this very process
        holds for the same purpose (a notebook cell that opened a run, run again in the same kernel) passes
        to this owner."""
        old = _HELD.get(str(self.path))
        if old is not None and takeover and old.what == self.what:
            old.release()
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise AlreadyRunning(self._busy(holder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file between our open and our lock: try again
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": platform.node(), "what": self.what, "since": utc_now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self.fd = fd
            _HELD[str(self.path)] = self
            return self
        raise AlreadyRunning(f"{self.what}: could not take the lock {self.path}; try again")

    def _busy(self, holder: dict) -> str:
        pid = holder.get("pid", "unknown")
        where = f" on {holder['host']}" if holder.get("host") not in (None, platform.node()) else ""
        since = f" since {holder['since']}" if holder.get("since") else ""
        what = holder.get("what") or "another process"
        return (
            f"{self.folder} is in use: {what} is already running (pid {pid}{where}{since}); "
            "wait for it to finish, or stop it"
        )

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        if _HELD.get(str(self.path)) is self:
            del _HELD[str(self.path)]

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    for _ in range(10):  # the holder writes its record right after locking
        try:
            data = os.pread(fd, 4096, 0)
            if data:
                return json.loads(data)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return {}


def is_run_folder(d: Path) -> bool:
    return (d / "run.json").is_file()


def sweep_folder_runs(d: Path) -> int:
    """How many run folders a sweep's folder ``<notebook>/<sweep>/`` holds."""
    return sum(1 for e in d.iterdir() if e.is_dir() and not e.name.startswith(".")) if d.is_dir() else 0


def refuse_sweep_folder(final: Path) -> None:
    """A single run named like a sweep: ``final`` exists and is not a run folder."""
    if final.is_dir() and not is_run_folder(final):
        raise NameClash(
            f"{final} is the folder of sweep {final.name!r} ({sweep_folder_runs(final)} run folder(s)); a single "
            f"run cannot take its name: choose another --run-name (the sweep's runs are {final}/<run key>/)"
        )


def refuse_single_run(group_dir: Path) -> None:
    """A sweep named like a single run: ``group_dir`` or one of its kept attempts is a run folder."""
    for d in [group_dir] + [group_dir.with_name(f"{group_dir.name}.{s}") for s in ATTEMPTS]:
        if is_run_folder(d):
            raise NameClash(
                f"{d} is a single run named {group_dir.name!r}; a sweep cannot take its name: rename the sweep "
                f"(name: in the sweep file), or move that run away"
            )


def _stage_owner(stage: Path) -> dict:
    try:
        return json.loads((stage / OWNER).read_text())
    except (OSError, ValueError):
        return {}


def clean_stale_stages(final: Path) -> None:
    """Remove the staging folders of ``final`` whose owner is dead. Call it holding ``final``'s lock: a live
    owner would hold the lock, so a stage found is stale unless its record names a live process on this
    host other than this one: its owner, or the owner's notebook process (``child``), which outlives a
    killed runner for the moment it takes to stop its kernel and remove the stage itself."""
    for d in final.parent.glob(f".{final.name}.staging-*"):
        owner = _stage_owner(d)
        here = owner.get("host") == platform.node()
        pids = [owner.get(k) for k in ("pid", "child") if owner.get(k)]
        if not (here and any(pid != os.getpid() and process_alive(pid) for pid in pids)):
            shutil.rmtree(d, ignore_errors=True)


@dataclass
class Claim:
    """A claimed run: its lock, and a fresh staging folder next to its final place."""

    lock: FolderLock
    stage: Path

    def release(self) -> None:
        self.lock.release()


def claim_run(final: Path, root: Path, what: str, takeover: bool = False, group: str | None = None) -> Claim:
    """Lock ``final``'s name, check it, clean stale stages and make a fresh staging folder (module docstring)."""
    make_folder(final.parent, root)
    lock = FolderLock(final, what).acquire(takeover)
    try:
        if group is None:
            refuse_sweep_folder(final)
        else:
            refuse_single_run(final.parent)
        clean_stale_stages(final)
        stage = stage_dir_for(final)
        stage.mkdir()
        (stage / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "what": what}))
    except BaseException:
        lock.release()
        raise
    return Claim(lock, stage)


def claim_group(group_dir: Path, root: Path, what: str) -> FolderLock:
    """Lock a sweep's folder ``<notebook>/<sweep>/`` for its driver, refusing a name a single run has."""
    make_folder(group_dir.parent, root)
    lock = FolderLock(group_dir, what).acquire()
    try:
        refuse_single_run(group_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def settle(final: Path) -> bool:
    """After a sweep: if nobody holds ``final``'s name, remove its stale staging folders and lock file;
    returns True when no staging folder is left."""
    try:
        with FolderLock(final, "clean-up"):
            clean_stale_stages(final)
    except AlreadyRunning:
        return False
    except FileNotFoundError:  # the folder's parent is gone: nothing to settle
        return True
    return not list(final.parent.glob(f".{final.name}.staging-*"))
