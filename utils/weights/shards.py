"""Safetensors checkpoints read and written by plain file I/O, one tensor at a time.

Reading (:class:`Checkpoint`): every shard's header is read and validated when the folder is
opened, so a bad download fails at once with the shard named and the fix, never mid-sweep: a shard
listed in ``model.safetensors.index.json`` but missing, a header that is not valid JSON, a tensor
whose bytes lie beyond the end of its shard (a truncated file), a byte count that does not match
the shape and dtype. Tensors are then read with ``pread`` into a fresh buffer: no memory map, so
resident memory holds the tensor being read and nothing of the tensors read before (a mapped
shard would keep every page it touched resident, i.e. grow to the size of the model).

Writing (:func:`write_checkpoint`): a sharded checkpoint streamed to disk tensor by tensor and
block by block from a generator (the header is computed from the shapes first), under a temp
name renamed at the end, with ``model.safetensors.index.json`` when there are several shards:
the layout ``save_pretrained`` writes, without ever holding a shard (or a tensor) in memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ..files import pread_exact, stage_dir_for, swap_in

INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20  # the format's own limit
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
REDOWNLOAD = "re-download this shard (or re-save the checkpoint)"


def stored_nbytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a tensor of ``shape`` stored as safetensors dtype ``dtype`` (e.g. ``"BF16"``)."""
    return math.prod(shape) * DTYPES[dtype].itemsize


class CheckpointFormatError(ValueError):
    """A safetensors checkpoint that cannot be read as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a shard: its dtype name, shape and absolute byte range ``[start, end)`` in ``file``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    file: Path

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """The validated tensor table of one ``.safetensors`` file (module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointFormatError(f"{path} holds {size} bytes: too short for a safetensors file; {REDOWNLOAD}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointFormatError(
                f"{path}: the safetensors header claims {n} bytes but the file holds {size}: the file is "
                f"truncated or not a safetensors file; {REDOWNLOAD}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path}: the safetensors header is not valid JSON ({e}); {REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: the safetensors header is not a JSON object; {REDOWNLOAD}")
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        out[name] = _entry(path, name, e, base, size)
    return out


def _entry(path: Path, name: str, e, base: int, size: int) -> TensorEntry:
    try:
        dtype, shape, (b, end) = e["dtype"], tuple(int(x) for x in e["shape"]), e["data_offsets"]
        b, end = int(b), int(end)
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointFormatError(
            f"{path}: malformed header entry for tensor {name!r} ({err!r}); {REDOWNLOAD}"
        ) from None
    if dtype not in DTYPES:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} has dtype {dtype!r}, not one of {', '.join(DTYPES)}; convert the checkpoint"
        )
    want = stored_nbytes(shape, dtype)
    if min(shape, default=0) < 0 or b < 0 or end - b != want:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} ({dtype} {list(shape)}, {want} bytes) has data offsets [{b}, {end}]; {REDOWNLOAD}"
        )
    if base + end > size:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} needs bytes up to {base + end} but the file holds only {size}: "
            f"the shard is truncated; {REDOWNLOAD}"
        )
    return TensorEntry(name, dtype, shape, base + b, base + end, path)


def read_index(folder: Path) -> dict[str, Path]:
    """``tensor name -> shard path`` from the index of a sharded checkpoint, every shard checked to exist."""
    index = folder / INDEX_NAME
    try:
        wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(wm, dict):
            raise TypeError("weight_map is not an object")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointFormatError(
            f"{index} is not a valid checkpoint index ({e!r}); re-download it or delete it if the folder "
            "holds a single model.safetensors"
        ) from None
    files = {k: folder / v for k, v in wm.items()}
    missing = sorted({p for p in files.values() if not p.is_file()})
    if missing:
        counts = {p: sum(1 for q in files.values() if q == p) for p in missing}
        listed = "; ".join(f"{p.name} ({counts[p]} tensors)" for p in missing)
        raise CheckpointFormatError(
            f"{folder}: the index {INDEX_NAME} lists shards that are missing: {listed}. The download is "
            "incomplete: download the missing shard files into this folder"
        )
    return files


class Checkpoint:
    """A folder of safetensors shards (with or without an index), validated on open (module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if (self.folder / INDEX_NAME).is_file():
            files = read_index(self.folder)
            shards = sorted(set(files.values()))
        else:
            files, shards = None, sorted(self.folder.glob("*.safetensors"))
        self.shards = shards
        self.entries: dict[str, TensorEntry] = {}
        for shard in shards:
            for name, e in read_header(shard).items():
                if files is None or files.get(name) == shard:
                    self.entries[name] = e
        if files is not None:
            absent = [n for n in files if n not in self.entries]
            if absent:
                raise CheckpointFormatError(
                    f"{self.folder / INDEX_NAME} maps tensor {absent[0]!r} to {files[absent[0]].name}, which "
                    f"does not contain it ({len(absent)} such tensors); {REDOWNLOAD}"
                )
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def _fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            return self._fds[path]

    def read(self, name: str, index: int | None = None) -> torch.Tensor:
        """The tensor ``name`` in its stored dtype, read into a fresh buffer (no memory map); with ``index``,
        only its slice ``[index]`` along the first axis (one expert of a 3-D expert tensor), read alone."""
        e = self.entries[name]
        shape, start = e.shape, e.start
        if index is not None:
            if not 0 <= index < shape[0]:
                raise IndexError(f"index {index} out of range for tensor {name!r} of shape {list(shape)}")
            shape = shape[1:]
            start += index * stored_nbytes(shape, e.dtype)
        t = torch.empty(shape, dtype=DTYPES[e.dtype])
        if t.numel():
            short = CheckpointFormatError(
                f"{e.file} ended while reading tensor {name!r} (it shrank after the checkpoint was opened); "
                f"{REDOWNLOAD}"
            )
            pread_exact(self._fd(e.file), t.reshape(-1).view(torch.uint8).numpy(), start, short)
        return t

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


# ---------------------------------------------------------------------------------------------- writing
def plan_shards(tensors: list[tuple[str, tuple[int, ...], str]], max_shard_bytes: int) -> list[list]:
    """Split ``(name, shape, dtype)`` in order into shards of at most ``max_shard_bytes`` (a larger tensor alone)."""
    shards: list[list] = [[]]
    size = 0
    for name, shape, dtype in tensors:
        nb = stored_nbytes(shape, dtype)
        if shards[-1] and size + nb > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tuple(shape), dtype))
        size += nb
    return shards


def _header_bytes(shard: list, metadata: dict) -> tuple[bytes, list[int]]:
    header: dict = {"__metadata__": metadata}
    off, sizes = 0, []
    for name, shape, dtype in shard:
        nb = stored_nbytes(shape, dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
        sizes.append(nb)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw, sizes


def write_checkpoint(
    folder: str | os.PathLike,
    tensors: list[tuple[str, tuple[int, ...], str]],
    blocks: Callable[[str, tuple[int, ...], torch.dtype], Iterable[torch.Tensor]],
    config: dict | None = None,
    max_shard_bytes: int = 5 * 10**9,
    on_tensor: Callable[[str, int], None] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a (sharded) safetensors checkpoint to ``folder``, streamed (module docstring).

    tensors: ``(name, shape, dtype name)`` in file order, e.g. ``("model.norm.weight", (4096,), "BF16")``.
    blocks: ``blocks(name, shape, torch_dtype)`` yields the tensor's contents in row-major order as
    tensors of that dtype (any block sizes); their bytes must add up to the tensor's.
    config: written as ``config.json``; ``extra_files``: ``{file name: text}`` written beside it.
    ``on_tensor(name, nbytes)`` is called after each tensor.
    The folder is built under a temp name next to it and renamed when complete; an existing
    ``folder`` is replaced.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir_for(folder)
    tmp.mkdir()
    try:
        shards = plan_shards(tensors, max_shard_bytes)
        n = len(shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map, total = {}, 0
        for fname, shard in zip(names, shards):
            head, sizes = _header_bytes(shard, {"format": "pt"})
            with open(tmp / fname, "wb") as f:
                f.write(head)
                for (name, shape, dtype), nb in zip(shard, sizes):
                    written = sum(f.write(_as_bytes(b)) for b in blocks(name, shape, DTYPES[dtype]))
                    if written != nb:
                        raise ValueError(f"blocks of {name!r} gave {written} bytes, expected {nb}")
                    weight_map[name] = fname
                    total += nb
                    if on_tensor is not None:
                        on_tensor(name, nb)
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _as_bytes(block: torch.Tensor) -> memoryview:
    return memoryview(block.contiguous().reshape(-1).view(torch.uint8).numpy())


def row_blocks(shape: tuple[int, ...], block_elems: int = 1 << 24) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of a tensor of ``shape`` with about ``block_elems`` elements each."""
    rows = shape[0] if shape else 1
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, block_elems // max(1, per_row))
    for i in range(0, rows, step):
        yield i, min(rows, i + step)
