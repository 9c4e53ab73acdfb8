"""The raw file formats of the small data sets, read as files from a stranger: idx (MNIST family) and CIFAR's
python pickles.

Every size a file states (an idx header's dimensions, a pickle's string lengths and array shapes) is checked
against the file, and against a documented cap, before anything of that size is allocated; compressed data
is decompressed in bounded chunks, only up to what its header implies.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np

from pracset.errors import DataError
from pracset.fileio import require_regular_file


# --------------------------------------------------------------------------- idx (MNIST family)
#: The most data an idx file may hold (its header's dimensions multiplied; EMNIST's largest file holds
#: 0.55 GB): a header claiming more is refused before anything is read or allocated.
MAX_IDX_BYTES = 1 << 32
_CHUNK = 1 << 24  # a compressed file is decompressed this many bytes at a time


def _read_up_to(handle, limit: int) -> bytes:
    """At most ``limit`` bytes of ``handle``, read in bounded chunks (never one allocation of ``limit``)."""
    parts, left = [], limit
    while left > 0:
        part = handle.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzip-compressed or not) into a uint8 array, validating its size.

    The header's dimensions are checked (exactly, without overflow) against :data:`MAX_IDX_BYTES` and, for an
    uncompressed file, against the file's size before the data is read; a compressed file is decompressed in
    bounded chunks and only up to one byte past the size its header implies, so a gzip bomb costs no more
    memory than the data it claims to hold.
    """
    try:
        require_regular_file(path, "idx file", error=DataError)  # a FIFO or a device would block or never end
        with open(path, "rb") as raw_handle:
            compressed = raw_handle.read(2) == b"\x1f\x8b"
            raw_handle.seek(0)
            handle = gzip.GzipFile(fileobj=raw_handle) if compressed else raw_handle
            head = handle.read(4)
            if len(head) < 4 or head[0:2] != b"\x00\x00":
                raise DataError(f"{path} is not an idx file (bad magic number)")
            dtype_code, ndim = head[2], head[3]
            if dtype_code != 0x08:
                raise DataError(f"{path}: idx data type 0x{dtype_code:02x} is not unsigned byte (0x08)")
            shape = handle.read(4 * ndim)
            if len(shape) < 4 * ndim:
                raise DataError(f"{path} is truncated (header cut short)")
            dims = struct.unpack(">" + "I" * ndim, shape)
            expected = math.prod(dims)  # Python integers: dimensions of 2**32 - 1 cannot overflow
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: its header claims {' x '.join(map(str, dims))} = {expected} bytes of data, "
                                f"more than an idx file may hold ({MAX_IDX_BYTES} bytes)")
            if not compressed:
                held = os.fstat(raw_handle.fileno()).st_size - 4 - 4 * ndim
                if held != expected:
                    raise DataError(f"{path} is truncated or padded: header says {expected} bytes of data, "
                                    f"file holds {held}")
            payload = _read_up_to(handle, expected + 1)
    except EOFError:
        raise DataError(f"cannot read {path}: the compressed file is truncated") from None
    except (OSError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(payload) != expected:
        held = "more" if len(payload) > expected else len(payload)
        raise DataError(f"{path} is truncated or padded: header says {expected} bytes of data, file holds {held}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


# --------------------------------------------------------------------------- CIFAR (python pickles)
class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches without running code: only the globals a numpy array needs are allowed.

    A pickle names the functions it calls while loading; a hostile ``data_batch_1`` could name
    ``os.system``. The CIFAR format needs numpy's array reconstruction and nothing else (its dicts,
    lists, strings and numbers need no global at all).
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def __init__(self, data: bytes, **kwargs):
        """Unpickle ``data`` (the whole file: every length in it is checked against its size first)."""
        _check_pickle_lengths(data)
        super().__init__(io.BytesIO(data), **kwargs)
        self.size = len(data)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds "
                                         "(refused: loading it could run code)")
        if name == "ndarray":
            return _PickledArray
        if name == "_reconstruct":
            reconstruct, limit = super().find_class(module, name), self.size

            def bounded(subtype, shape, dtype):  # numpy calls it with shape (0,); refuse a shape the file cannot fill
                if not isinstance(shape, tuple) or math.prod(map(int, shape)) * getattr(dtype, "itemsize", 1) > limit:
                    raise pickle.UnpicklingError(f"it reconstructs an array of shape {shape!r}, larger than the file")
                return reconstruct(subtype, shape, dtype)

            return bounded
        return super().find_class(module, name)


class _PickledArray(np.ndarray):
    """What a CIFAR pickle's ``numpy.ndarray`` becomes: its state must carry raw bytes, which numpy checks
    against the shape *before* allocating (an object array's list state is allocated from the shape first,
    so a pickle could claim 2**40 elements)."""

    def __setstate__(self, state):
        raw = state[-1] if isinstance(state, tuple) and state else None
        if not isinstance(raw, (bytes, bytearray, str)):
            raise pickle.UnpicklingError("it holds an array whose data is not raw bytes (a CIFAR batch holds none)")
        super().__setstate__(state)


#: The largest CIFAR python batch file read (CIFAR-100's ``train`` is 155 MB): a larger one is refused unread.
MAX_PICKLE_BYTES = 1 << 30
_COUNTED = {pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1), pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
            pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4), pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8)}
_OPCODES = {op.code.encode("latin1")[0]: op for op in pickletools.opcodes}


def _check_pickle_lengths(data: bytes) -> None:
    """Walk ``data``'s opcodes up to STOP; raise UnpicklingError when a length it states (a string's, a frame's)
    runs past the end of the data.

    Python's unpickler allocates a counted string (``BINBYTES8``, ``BINUNICODE8``, ...) at the size the file
    states before it reads it, so a 30-byte file claiming a 2**62-byte string would be a 2**62-byte allocation:
    it is refused here, before any allocation.
    """
    pos, end = 0, len(data)
    while pos < end:
        op = _OPCODES.get(data[pos])
        if op is None:
            raise pickle.UnpicklingError(f"unknown pickle opcode 0x{data[pos]:02x} at byte {pos}")
        pos += 1
        arg = op.arg
        if op.name == "STOP":
            return
        if arg is None:
            continue
        if arg.n >= 0:
            if op.name == "FRAME" and pos + 8 <= end and pos + 8 + struct.unpack_from("<Q", data, pos)[0] > end:
                raise pickle.UnpicklingError(f"a pickle frame at byte {pos - 1} claims more bytes than the file holds")
            pos += arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise pickle.UnpicklingError(f"{op.name} at byte {pos - 1} has no end of line")
                pos = newline + 1
        else:
            form, width = _COUNTED[arg.n]
            if pos + width > end:
                break
            length = struct.unpack_from(form, data, pos)[0]
            if length < 0 or pos + width + length > end:
                raise pickle.UnpicklingError(f"{op.name} at byte {pos - 1} claims {length} bytes, more than the "
                                             f"{end} the file holds")
            pos += width + length
    raise pickle.UnpicklingError("the file is truncated (it ends before the pickle's STOP)")


def read_cifar_pickle(path: Path):
    """A CIFAR python batch, unpickled by :class:`_CifarUnpickler` (data only; every length and shape it
    states checked against the file first); any way the file is bad is one :class:`DataError` naming it."""
    try:
        require_regular_file(path, "CIFAR batch", error=DataError)  # a FIFO or a device would block forever
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_PICKLE_BYTES:
                raise DataError(f"{path} is {size} bytes, more than a CIFAR batch holds ({MAX_PICKLE_BYTES} "
                                "bytes at most are read)")
            data = handle.read(MAX_PICKLE_BYTES + 1)
        return _CifarUnpickler(data, encoding="latin1").load()
    except EOFError:
        raise DataError(f"cannot read {path}: the file is truncated") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error) as exc:  # a hostile pickle's ways to fail (only numpy's array reconstruction runs)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path}: {first}") from None


__all__ = ["MAX_IDX_BYTES", "MAX_PICKLE_BYTES", "read_cifar_pickle", "read_idx"]
