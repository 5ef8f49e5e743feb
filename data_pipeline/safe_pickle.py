"""Loading pickles from users' files without running their code.

A pickle can name any importable callable (``os.system`` through ``__reduce__``), and plain
``pickle.load`` calls it.  Every pickle this project reads from a user's file (the reference
HowTo100M ``<split>_meta.pkl``, the evaluation sets' ``.pkl`` files) goes through
:func:`load_plain_pickle`, which resolves only the globals that plain data needs:

* builtin containers and scalars (``dict``, ``list``, ``tuple``, ``set``, ``str``, ``int``,
  ...), which pickle encodes without any global, plus ``set``/``frozenset``/``OrderedDict``;
* numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray.scalar`` and their
  ``numpy._core`` spellings, and ``_codecs.encode`` that protocol 2 uses for raw bytes).

Anything else is refused with :class:`pickle.UnpicklingError` naming the global.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO

__all__ = ["ALLOWED_GLOBALS", "load_plain_pickle", "loads_plain_pickle"]

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
    ("builtins", "slice"), ("builtins", "range"), ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    *((mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *(("numpy.dtypes", n) for n in ("Float16DType", "Float32DType", "Float64DType", "Int8DType",
                                     "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
                                     "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType",
                                     "StrDType", "BytesDType")),
})


class _PlainUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name}: only plain containers, strings, numbers "
            "and numpy arrays are allowed in this file")


def loads_plain_pickle(data: bytes) -> Any:
    """:func:`pickle.loads` restricted to plain data (see the module docstring)."""
    return _PlainUnpickler(io.BytesIO(data)).load()


def load_plain_pickle(source: str | os.PathLike | BinaryIO) -> Any:
    """Reads a pickle of plain containers and numpy arrays from a path or a binary file.

    Raises ``pickle.UnpicklingError`` for a forbidden global, and whatever reading raises
    (``FileNotFoundError``, ``EOFError`` for a truncated file, ...).
    """
    if hasattr(source, "read"):
        return _PlainUnpickler(source).load()
    with open(source, "rb") as fh:
        return _PlainUnpickler(fh).load()
