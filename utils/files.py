"""Writing result files so that nothing half-written ever carries a final name.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: a temp file in the same folder, then
  ``os.replace``. :func:`atomic_path` yields such a temp path for writers that need a file name
  (h5py, ``torch.save``) and renames it on success, deletes it on failure.
* :func:`append_jsonl` appends one JSON line and flushes it to disk; :func:`read_jsonl` reads the
  lines back and drops a torn last line (a process killed mid-write), so a resumed run continues
  from the last complete record.
* :func:`to_jsonable` turns numpy / torch values, NaN and Inf into plain JSON.
* :func:`pread_exact` fills a buffer from a file offset without a memory map (the weight readers).

Files get the permissions a newly created file gets under the current umask (``mkstemp`` alone
would give 0600).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator


def pread_exact(fd: int, buf, offset: int, short: Exception) -> None:
    """Fill the writable buffer ``buf`` with the bytes of ``fd`` from ``offset`` (``preadv`` until full);
    a file that ends first raises ``short``, the caller's own error naming the file and what was read."""
    mv, got = memoryview(buf).cast("B"), 0
    while got < len(mv):
        n = os.preadv(fd, [mv[got:]], offset + got)
        if n <= 0:
            raise short
        got += n


def default_file_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied (what ``open(..., "w")`` would create)."""
    um = os.umask(0)
    os.umask(um)
    return mode & ~um


def temp_path_next_to(path: str | os.PathLike) -> Path:
    """A new, empty, hidden temp file in the folder of ``path`` (the folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give ``tmp`` the usual permissions and rename it to ``path`` (atomic on one file system)."""
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, path)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it to ``path``, else delete it."""
    tmp = temp_path_next_to(path)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy / torch scalars and arrays as numbers and lists, NaN as null,
    +-Inf as the strings ``"inf"`` / ``"-inf"``, paths and other objects as strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return str(obj)
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            obj = obj.item()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, (int, bool, str)):
        return obj
    return str(obj)


def json_text(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json_text(obj, indent))


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append one JSON line to ``path`` and push it to disk (flush + fsync).

    A process killed during the write leaves at most a torn last line, which
    :func:`read_jsonl` drops and the next append cuts off first (so a record is
    never glued onto a fragment).
    """
    line = (json.dumps(to_jsonable(record)) + "\n").encode("utf-8")
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":  # a torn last line: cut back to the last complete one
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, repair: bool = False) -> list:
    """The records of a JSONL file; a torn (unparseable, unterminated) last line is dropped, and with
    ``repair`` the file is rewritten without it so that appends continue cleanly. A bad line
    elsewhere raises ``ValueError`` naming the file and line."""
    p = Path(path)
    if not p.is_file():
        return []
    text = p.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    out, torn = [], False
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError as e:
            last = i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1 :])
            if last and not text.endswith("\n"):
                torn = True
                break
            raise ValueError(f"{p}: line {i + 1} is not valid JSON ({e}); fix or delete the file") from None
    if torn and repair:
        atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in out))
    return out


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write all ``records`` as a JSONL file, atomically."""
    return atomic_write_text(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in records))


class Transaction:
    """Mixin for writers: ``with`` calls ``close()`` (publish) on success and ``abort()`` on an error."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def stage_dir_for(final: Path) -> Path:
    """A fresh hidden staging folder next to ``final``."""
    return final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:10]}"


def swap_in(stage: Path, final: Path, keep_missing: bool = False) -> None:
    """Replace ``final`` by the folder ``stage`` (the old one is removed after the swap). With
    ``keep_missing``, what the old folder has and ``stage`` lacks (an earlier failed attempt's checkpoints,
    when the new attempt failed before copying them) is moved into ``stage`` first, not lost."""
    if Path(stage).resolve() == Path(final).resolve():
        raise ValueError(f"cannot swap {stage} into itself")
    if keep_missing and final.is_dir():
        for p in final.iterdir():
            if not p.name.startswith(".") and not (stage / p.name).exists():
                os.replace(p, stage / p.name)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:10]}"
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
