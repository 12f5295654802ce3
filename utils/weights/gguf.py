"""A small, fast GGUF reader: header, metadata and tensors, one tensor at a time.

The ``gguf`` package's ``GGUFReader`` decodes every metadata array into Python objects on open,
which for a 49k-token vocabulary costs seconds. Here the header is parsed once, string arrays
(the vocabulary, the merges) are skipped unless asked for, and tensor data is memory-mapped.

Dequantisation of the common types (F32, F16, BF16, Q8_0, Q4_0, Q4_1) is done in torch; other
types fall back to ``gguf.quants.dequantize``. Tensors come back as float32 in numpy row-major
order, shape ``(rows, cols)`` = GGUF ``ne`` reversed, i.e. the same layout as the PyTorch weight.

Checked on open: every tensor's byte extent against the file size, so a file truncated inside its
tensor data fails at once with the file, the first tensor that does not fit and the fix (not with
a reshape error mid-sweep). Tensor data is read with ``pread`` into a fresh buffer, not through
the memory map: resident memory holds the tensor being read, not every page read so far.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import pread_exact

GGUF_MAGIC = b"GGUF"

# metadata value types
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR_FMT = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}

# ggml tensor types (subset with their block layout: (block_size, bytes_per_block))
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 3, 8, 30
_BLOCKS = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_BF16: (1, 2), GGML_Q8_0: (32, 34), GGML_Q4_0: (32, 18)}
_BLOCKS[GGML_Q4_1] = (32, 20)


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    """Bytes of a tensor of ``shape`` stored as ``ggml_type`` (``GGUFFormatError`` for an unknown type)."""
    if ggml_type in _BLOCKS:
        block, nbytes = _BLOCKS[ggml_type]
    else:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise GGUFFormatError(f"unknown ggml tensor type {ggml_type}") from None
    n_el = int(np.prod(shape)) if shape else 1
    return -(-n_el // block) * nbytes


def _block_size(ggml_type: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)][0]


class GGUFFormatError(ValueError):
    """The file is not a readable GGUF file."""


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols) for a matrix
    ggml_type: int
    offset: int  # absolute byte offset in the file


class GGUFFile:
    """Parsed GGUF header with lazy, one-at-a-time tensor access.

    ``metadata`` holds every scalar and small array value; arrays longer than
    ``max_array`` (the vocabulary, the merges) are recorded as ``("<array>", length)``.
    """

    def __init__(self, path: str | Path, max_array: int = 1024):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = self._mm
        if bytes(buf[:4]) != GGUF_MAGIC:
            raise GGUFFormatError(
                f"{self.path} is not a GGUF file (bad magic {bytes(buf[:4])!r}); "
                "pass a .gguf file, a Hugging Face checkpoint folder or a hub id"
            )
        try:
            self._parse(max_array)
        except (struct.error, IndexError, UnicodeDecodeError) as e:
            raise GGUFFormatError(f"{self.path} is truncated or corrupted ({e}); re-download the file") from e
        self._check_extents()
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _check_extents(self) -> None:
        """Every tensor's bytes must lie inside the file (module docstring)."""
        size = len(self._mm)
        for info in sorted(self.tensors.values(), key=lambda t: t.offset):
            try:
                end = info.offset + tensor_nbytes(info.shape, info.ggml_type)
            except GGUFFormatError as e:
                raise GGUFFormatError(f"{self.path}: tensor {info.name!r} has an {e}; re-download the file") from None
            if end > size:
                raise GGUFFormatError(
                    f"{self.path} is truncated: tensor {info.name!r} (shape {list(info.shape)}, ggml type "
                    f"{info.ggml_type}) needs bytes up to {end} but the file holds {size} "
                    f"({len(self.tensors)} tensors, the first that does not fit); re-download or re-convert the file"
                )

    # -- parsing ------------------------------------------------------------------------
    def _parse(self, max_array: int) -> None:
        mv = memoryview(self._mm)
        pos = 4
        (self.version,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if self.version < 2:
            raise GGUFFormatError(f"GGUF version {self.version} is too old (need 2 or 3)")
        n_tensors, n_kv = struct.unpack_from("<QQ", mv, pos)
        pos += 16

        def read_str(p):
            (n,) = struct.unpack_from("<Q", mv, p)
            return bytes(mv[p + 8 : p + 8 + n]).decode("utf-8"), p + 8 + n

        def read_val(t, p, keep=True):
            if t in _SCALAR_FMT:
                f = _SCALAR_FMT[t]
                return struct.unpack_from(f, mv, p)[0], p + struct.calcsize(f)
            if t == _STRING:
                return read_str(p)
            if t == _ARRAY:
                at, n = struct.unpack_from("<IQ", mv, p)
                p += 12
                if at in _SCALAR_FMT:
                    sz = struct.calcsize(_SCALAR_FMT[at])
                    if n <= max_array and keep:
                        vals = list(struct.unpack_from("<" + _SCALAR_FMT[at][1] * n, mv, p))
                    else:
                        vals = ("<array>", n)
                    return vals, p + sz * n
                if at == _STRING:
                    if n <= max_array and keep:
                        out = []
                        for _ in range(n):
                            s, p = read_str(p)
                            out.append(s)
                        return out, p
                    for _ in range(n):  # skip quickly
                        (ln,) = struct.unpack_from("<Q", mv, p)
                        p += 8 + ln
                    return ("<array>", n), p
                vals = []
                for _ in range(n):
                    v, p = read_val(at, p, keep)
                    vals.append(v)
                return vals, p
            raise GGUFFormatError(f"unknown GGUF metadata type {t}")

        self.metadata: dict = {}
        for _ in range(n_kv):
            key, pos = read_str(pos)
            (t,) = struct.unpack_from("<I", mv, pos)
            pos += 4
            val, pos = read_val(t, pos)
            self.metadata[key] = val

        infos = []
        for _ in range(n_tensors):
            name, pos = read_str(pos)
            (nd,) = struct.unpack_from("<I", mv, pos)
            pos += 4
            ne = struct.unpack_from("<" + "Q" * nd, mv, pos)
            pos += 8 * nd
            gt, off = struct.unpack_from("<IQ", mv, pos)
            pos += 12
            infos.append((name, tuple(int(x) for x in reversed(ne)), gt, off))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = (pos + align - 1) // align * align
        self.tensors: dict[str, GGUFTensorInfo] = {
            n: GGUFTensorInfo(n, s, gt, data_start + off) for n, s, gt, off in infos
        }

    # -- access -------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def _slab(self, name: str, index: int | None) -> tuple[tuple[int, ...], int]:
        """Shape and byte offset of tensor ``name``, or of its slice ``[index]`` along the first axis."""
        info = self.tensors[name]
        if index is None:
            return info.shape, info.offset
        if not 0 <= index < info.shape[0]:
            raise IndexError(f"index {index} out of range for tensor {name!r} of shape {list(info.shape)}")
        shape = info.shape[1:]
        block = _BLOCKS.get(info.ggml_type, (None,))[0] or _block_size(info.ggml_type)
        if int(np.prod(shape)) % block:
            raise GGUFFormatError(f"{self.path}: a slice of {name!r} does not start on a quantisation block")
        return shape, info.offset + index * tensor_nbytes(shape, info.ggml_type)

    def raw_bytes(self, name: str, index: int | None = None) -> np.ndarray:
        """The stored bytes of tensor ``name`` (uint8; with ``index`` of its slice along the first axis),
        read into a fresh buffer (module docstring)."""
        shape, offset = self._slab(name, index)
        nbytes = tensor_nbytes(shape, self.tensors[name].ggml_type)
        buf = np.empty(nbytes, dtype=np.uint8)
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
        short = GGUFFormatError(f"{self.path} ended while reading {name!r} (it shrank after it was opened)")
        pread_exact(self._fd, buf, offset, short)
        return buf

    def tensor(self, name: str, index: int | None = None) -> torch.Tensor:
        """Dequantised float32 tensor (numpy row-major shape); with ``index``, its slice ``[index]`` along
        the first axis (one expert of a 3-D expert tensor), read alone."""
        shape, _ = self._slab(name, index)
        n_el = int(np.prod(shape))
        return dequantize(self.raw_bytes(name, index), 0, n_el, self.tensors[name].ggml_type).reshape(shape)

    def rounding_variance(self, name: str, index: int | None = None) -> torch.Tensor | None:
        """The variance ``step² / 12`` of each value's rounding error (shape of the tensor, or of its slice
        ``[index]``), or None when the tensor is not block-quantised (:func:`rounding_steps`)."""
        shape, _ = self._slab(name, index)
        steps = rounding_steps(self.raw_bytes(name, index), self.tensors[name].ggml_type)
        if steps is None:
            return None
        return torch.from_numpy(steps[: int(np.prod(shape))] ** 2 / 12.0).reshape(shape)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _f16(raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(raw, copy=True).view(np.float16)).float()


def dequantize(mm: np.ndarray, offset: int, n_el: int, ggml_type: int) -> torch.Tensor:
    """Dequantise ``n_el`` elements of type ``ggml_type`` starting at byte ``offset`` to float32 (1-D).

    ``mm`` is a writable uint8 buffer of this process (``raw_bytes``' output); an F32 tensor comes back as a
    view of it, without a copy.
    """
    if ggml_type == GGML_F32:
        return torch.from_numpy(mm[offset : offset + 4 * n_el].view(np.float32))
    if ggml_type == GGML_F16:
        return _f16(mm[offset : offset + 2 * n_el])
    if ggml_type == GGML_BF16:
        raw = mm[offset : offset + 2 * n_el].view(np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16).float()
    if ggml_type == GGML_Q8_0:  # block of 32: f16 scale d, 32 x int8
        nb = n_el // 32
        blk = np.asarray(mm[offset : offset + 34 * nb]).reshape(nb, 34)
        d = _f16(blk[:, :2])
        q = torch.from_numpy(np.ascontiguousarray(blk[:, 2:]).view(np.int8)).float()
        return (q * d).reshape(-1)
    if ggml_type in (GGML_Q4_0, GGML_Q4_1):
        # Q4_0: f16 d, 16 bytes of nibbles, x = d * (q - 8)
        # Q4_1: f16 d, f16 m, 16 bytes of nibbles, x = d * q + m
        # element j < 16 is the low nibble of byte j, element j >= 16 the high nibble of byte j - 16
        hdr = 2 if ggml_type == GGML_Q4_0 else 4
        bs = hdr + 16
        nb = n_el // 32
        blk = np.asarray(mm[offset : offset + bs * nb]).reshape(nb, bs)
        d = _f16(blk[:, :2])
        qs = torch.from_numpy(np.ascontiguousarray(blk[:, hdr:]))
        q = torch.cat([qs & 0x0F, qs >> 4], dim=1).float()
        if ggml_type == GGML_Q4_0:
            return ((q - 8.0) * d).reshape(-1)
        m = _f16(blk[:, 2:4])
        return (q * d + m).reshape(-1)
    # anything else: the reference implementation from the gguf package
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize as ref_dequantize

    qt = GGMLQuantizationType(ggml_type)
    block, nbytes = GGML_QUANT_SIZES[qt]
    raw = np.asarray(mm[offset : offset + n_el // block * nbytes])
    return torch.from_numpy(np.ascontiguousarray(ref_dequantize(raw, qt)).reshape(-1).astype(np.float32))


# ------------------------------------------------------------------------------------- quantisation noise
#: block types whose rounding step is read here: f16 scale ``d`` at byte 0 of each 32-value block
_STEP_AT_0 = {2: 18, 3: 20, 6: 22, 7: 24, 8: 34}  # Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: bytes per block
GGML_Q4_K, GGML_Q5_K, GGML_Q6_K = 12, 13, 14
QUANT_NAMES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}


def rounding_steps(raw: np.ndarray, ggml_type: int) -> np.ndarray | None:
    """The rounding step of every stored value of a quantised tensor (float64, one per value, in storage
    order), or None for a type that is not block-quantised here (F32 / F16 / BF16, or a type this reader
    has no noise model for). A value rounded to the nearest multiple of its step ``s`` carries a rounding
    error uniform on ``[-s/2, s/2]``: variance ``s² / 12``.

    Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0: the block's scale ``d`` (32 values). Q4_K / Q5_K: ``d · sc`` of each
    32-value sub-block (6-bit ``sc``). Q6_K: ``d · scale`` of each 16-value sub-block (8-bit ``scale``).
    """
    raw = np.asarray(raw, dtype=np.uint8)
    if ggml_type in _STEP_AT_0:
        bs = _STEP_AT_0[ggml_type]
        d = raw.reshape(-1, bs)[:, :2].copy().view(np.float16).astype(np.float64)[:, 0]
        return np.repeat(np.abs(d), 32)
    if ggml_type in (GGML_Q4_K, GGML_Q5_K):
        from gguf.quants import Q4_K

        bs = 144 if ggml_type == GGML_Q4_K else 176
        blk = raw.reshape(-1, bs)
        d = blk[:, :2].copy().view(np.float16).astype(np.float64)
        sc, _ = Q4_K.get_scale_min(blk[:, 4:16].copy())
        return np.repeat((np.abs(d) * sc.astype(np.float64)).reshape(-1), 32)
    if ggml_type == GGML_Q6_K:
        blk = raw.reshape(-1, 210)
        scales = blk[:, 192:208].copy().view(np.int8).astype(np.float64)
        d = blk[:, 208:210].copy().view(np.float16).astype(np.float64)
        return np.repeat(np.abs(d * scales).reshape(-1), 16)
    return None


# ------------------------------------------------------------------------------------------------ writing
def _add_value(w, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if 0 <= value < 2**32 else w.add_int64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:
        raise TypeError(f"GGUF metadata {key!r}: unsupported value type {type(value).__name__}")


def write_gguf(path: str | Path, arch: str, metadata: dict, tensors: dict, qtype: str = "F32") -> Path:
    """Write a GGUF file (llama.cpp's format, through the ``gguf`` package's writer): ``metadata`` maps full
    keys (``"llama.block_count"``) to values; ``tensors`` maps names to arrays in PyTorch order (``(out, in)``
    for a matrix; experts first for a 3-D tensor). Tensors of two or more dimensions whose rows fit the
    quantisation blocks are stored as ``qtype`` (``F32``, ``F16``, ``Q8_0``, ``Q4_0``, ``Q4_1``, ``Q4_K``, ...),
    the others as F32. Written under a temporary name and renamed when complete."""
    import gguf
    from gguf.quants import quantize

    path = Path(path)
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    block = gguf.GGML_QUANT_SIZES[qt][0]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        for k, v in metadata.items():
            if k != "general.architecture":
                _add_value(w, k, v)
        for name, arr in tensors.items():
            a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
            if qtype != "F32" and a.ndim >= 2 and a.shape[-1] % block == 0:
                w.add_tensor(name, quantize(a, qt), raw_dtype=qt)
            else:
                w.add_tensor(name, a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
