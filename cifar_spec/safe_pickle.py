"""The one unpickler of the project: CIFAR-10's python format, and nothing that runs code.

CIFAR-10's python format is pickle, which can run any code it names. Every
data file is read by ``load_pickle``, whose unpickler admits only what
CIFAR-10 holds: dicts, lists, strings, bytes, ints and numpy arrays of
integer dtypes. Anything else is refused before it runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from cifar_spec.errors import UnsafeFile


class Refused(pickle.UnpicklingError):
    """The pickle asks for something CIFAR-10 never holds (as opposed to being merely damaged)."""


def reconstruct_array(subtype: object, shape: tuple, dtype: object) -> np.ndarray:
    """numpy's own pickle entry point, for plain arrays only (no subclass, no objects)."""
    if subtype is not NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise Refused(f"an array built as {subtype!r}{shape!r} with {dtype!r}")
    return np.ndarray((0,), np.int8)


def make_dtype(code: object, align: bool = False, copy: bool = False) -> np.dtype:
    if code not in ARRAY_DTYPES:
        raise Refused(f"an array of dtype {code!r}; CIFAR-10 holds {ARRAY_DTYPES}")
    return np.dtype(code, align, copy)


def latin1_bytes(text: object, encoding: str = "latin1") -> bytes:
    """Protocol 2 stores bytes as _codecs.encode(text, 'latin1'); no other codec is admitted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"an encode of {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


def empty_bytes(*args: object) -> bytes:
    """Protocol 2 stores b'' as a call to bytes() (an empty batch's pixels): nothing else."""
    if args:
        raise Refused(f"a call to bytes with {len(args)} argument(s)")
    return b""


NDARRAY = object()  # stands for numpy.ndarray: named in a pickle, never called from one
ARRAY_DTYPES = ("u1", "i4", "i8")  # the pixels, and labels where a tool stored them as arrays
ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): reconstruct_array,  # numpy < 2, real CIFAR-10
    ("numpy._core.multiarray", "_reconstruct"): reconstruct_array,  # numpy >= 2
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): make_dtype,
    ("_codecs", "encode"): latin1_bytes,
    ("__builtin__", "bytes"): empty_bytes,  # protocol 2 names Python 2's module
    ("builtins", "bytes"): empty_bytes,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build CIFAR-10's contents and nothing that runs code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ADMITTED:
            raise Refused(f"it names {module}.{name}, which CIFAR-10 never holds")
        return ADMITTED[module, name]

    def persistent_load(self, pid: object) -> object:
        raise Refused("it refers to a persistent object")


def load_pickle(raw: bytes, path: Path) -> object:
    """Unpickle `raw` (the bytes of `path`) with CifarUnpickler; UnsafeFile names the file.

    A refused pickle raises UnsafeFile; a merely damaged one raises what
    pickle raises (UnpicklingError, EOFError, ...), for the caller to word.
    """
    try:
        # latin1: Python 2 wrote the real CIFAR-10, numpy's buffers among its strings.
        return CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Refused as error:
        raise UnsafeFile(
            f"{path} was refused unread: {error}; it is not a CIFAR-10 file (it may be planted "
            "to run code): delete it and write or download the data set again"
        ) from None
