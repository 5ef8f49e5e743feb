"""One small file layer for the data path: local folders and ``scheme://`` URLs alike.

A *local* path (no ``scheme://`` prefix) is handled with ``os``/``builtins`` only, so code that
only reads local files (the input worker processes, the store reader) never imports
TensorFlow.  A *URL* (``gs://bucket/x``, ``ram://x``, ``s3://...``, anything with a scheme) goes
through ``tf.io.gfile``, imported on first use (:func:`data_pipeline.tf_utils.import_tensorflow`),
so every filesystem TensorFlow knows works here too.

Functions::

    open(path, mode)            builtins.open for local paths; for URLs a buffered binary or text
                                wrapper around tf.io.gfile.GFile (np.load / np.save / csv work on it)
    exists, isfile, isdir, listdir, makedirs, remove, rmtree, getsize, glob, copy
    replace(src, dst)           rename that overwrites dst (also available as ``rename``)
    move_tree(src, dst)         move a folder (one rename locally, copy + delete on URLs)
    join, dirname, basename, abspath   URL-aware (``join("gs://b/x", "y") == "gs://b/x/y"``)
    read_range(path, offset, n) n bytes at offset: one ranged read, through a cache of open handles
    RangeReader                 such a cache with its own lifetime (one per FeatureStore)
    atomic_write_json, read_json, write_bytes, read_bytes
    json_ready                  numpy values -> Python numbers/lists (NaN -> null on request)

Atomicity: :func:`replace` is ``os.replace`` on local disks (atomic).  On an object store
(``gs://``) a rename is a server-side copy followed by a delete of the source: the
destination object appears whole (an object is never visible half-written), but for a moment
both names exist, and a crash between the two steps leaves the temporary name behind (the
converters ignore and overwrite such leftovers).  :func:`atomic_write_json` writes to a
temporary name unique to the process and renames it, so concurrent writers of the same file
never write into each other's temporary file.

Errors on URLs are raised as the built-in exceptions a local path would give
(``FileNotFoundError``, ``FileExistsError``, ``PermissionError``, else ``OSError``), with the
path in the message.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import glob as _glob
import io
import json
import os
import posixpath
import re
import shutil
import threading
import uuid
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (handled by ``tf.io.gfile``), False for local paths."""
    return bool(_URL.match(os.fspath(path)))


def _str(path: PathLike) -> str:
    return os.fspath(path)


def _gfile():
    from data_pipeline.tf_utils import import_tensorflow
    return import_tensorflow().io.gfile


@contextlib.contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """Turn TensorFlow's filesystem errors into the built-in ``OSError`` family."""
    from data_pipeline.tf_utils import import_tensorflow
    tf = import_tensorflow()
    try:
        yield
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(errno.ENOENT, f"not found ({e.message})", path) from e
    except tf.errors.AlreadyExistsError as e:
        raise FileExistsError(errno.EEXIST, f"already exists ({e.message})", path) from e
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(errno.EACCES, f"permission denied ({e.message})", path) from e
    except tf.errors.OpError as e:
        raise OSError(errno.EIO, f"{type(e).__name__}: {e.message}", path) from e


# ----------------------------------------------------------------------------- paths

def join(path: PathLike, *parts: str) -> str:
    """``os.path.join`` for local paths; ``/``-joined for URLs (keeps ``gs://bucket/`` intact)."""
    path = _str(path)
    if is_url(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def dirname(path: PathLike) -> str:
    path = _str(path)
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def basename(path: PathLike) -> str:
    path = _str(path)
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def abspath(path: PathLike) -> str:
    """``os.path.abspath`` for local paths; URLs are returned as they are."""
    path = _str(path)
    return path if is_url(path) else os.path.abspath(path)


# ----------------------------------------------------------------------------- queries

def exists(path: PathLike) -> bool:
    path = _str(path)
    if not is_url(path):
        return os.path.exists(path)
    with _os_errors(path):
        return bool(_gfile().exists(path))


def isfile(path: PathLike) -> bool:
    """True for an existing file (not a folder).  On URLs one metadata request; prefer it to
    :func:`exists` for files, since some filesystems (``ram://``) report any name that is a
    prefix of another name as an existing folder."""
    path = _str(path)
    if not is_url(path):
        return os.path.isfile(path)
    from data_pipeline.tf_utils import import_tensorflow
    tf = import_tensorflow()
    try:
        with _os_errors(path):
            return not tf.io.gfile.stat(path).is_directory
    except FileNotFoundError:
        return False


def isdir(path: PathLike) -> bool:
    path = _str(path)
    if not is_url(path):
        return os.path.isdir(path)
    with _os_errors(path):
        return bool(_gfile().isdir(path))


def listdir(path: PathLike) -> list[str]:
    """Names (not paths) of the entries of a folder, in no particular order."""
    path = _str(path)
    if not is_url(path):
        return os.listdir(path)
    with _os_errors(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def getsize(path: PathLike) -> int:
    """Size of a file in bytes (``FileNotFoundError`` if missing, ``IsADirectoryError`` for a folder)."""
    path = _str(path)
    if not is_url(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", path)
        return os.path.getsize(path)
    with _os_errors(path):
        st = _gfile().stat(path)
    if st.is_directory:
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", path)
    return int(st.length)


def glob(pattern: PathLike) -> list[str]:
    """Paths matching ``pattern`` (``*``, ``?``, ``[...]``), sorted."""
    pattern = _str(pattern)
    if not is_url(pattern):
        return sorted(_glob.glob(pattern))
    with _os_errors(pattern):
        return sorted(_gfile().glob(pattern))


# ----------------------------------------------------------------------------- changes

def makedirs(path: PathLike) -> None:
    """Create ``path`` and its parents; nothing happens if it exists."""
    path = _str(path)
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
        return
    with _os_errors(path):
        _gfile().makedirs(path)


def remove(path: PathLike) -> None:
    path = _str(path)
    if not is_url(path):
        os.remove(path)
        return
    with _os_errors(path):
        _gfile().remove(path)


def rmtree(path: PathLike) -> None:
    path = _str(path)
    if not is_url(path):
        shutil.rmtree(path)
        return
    with _os_errors(path):
        _gfile().rmtree(path)


def replace(src: PathLike, dst: PathLike) -> None:
    """Rename ``src`` to ``dst``, replacing ``dst`` if it exists.

    Atomic on local disks; on object stores a copy then a delete (see the module docstring).
    """
    src, dst = _str(src), _str(dst)
    if not (is_url(src) or is_url(dst)):
        os.replace(src, dst)
        return
    with _os_errors(src):
        _gfile().rename(src, dst, overwrite=True)


rename = replace


def move_tree(src: PathLike, dst: PathLike) -> None:
    """Move the folder ``src`` to ``dst`` (which must not exist).

    Local: one ``os.replace`` (atomic).  URLs: every file is copied, then ``src`` is deleted;
    not atomic (a reader may see ``dst`` partly filled), so write a marker file last if
    readers must know that ``dst`` is complete.
    """
    src, dst = _str(src), _str(dst)
    if not (is_url(src) or is_url(dst)):
        os.replace(src, dst)
        return
    gfile = _gfile()
    with _os_errors(src):
        root = src.rstrip("/")
        for folder, _, files in gfile.walk(root):
            rel = folder.rstrip("/")[len(root):].lstrip("/")
            target = posixpath.join(dst, rel) if rel else dst
            gfile.makedirs(target)
            for name in files:
                gfile.copy(posixpath.join(folder, name), posixpath.join(target, name), overwrite=True)
        gfile.rmtree(root)


def copy(src: PathLike, dst: PathLike, *, overwrite: bool = False) -> None:
    src, dst = _str(src), _str(dst)
    if not (is_url(src) or is_url(dst)):
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(errno.EEXIST, "already exists", dst)
        shutil.copyfile(src, dst)
        return
    with _os_errors(src):
        _gfile().copy(src, dst, overwrite=overwrite)


# ----------------------------------------------------------------------------- open

class _GFileRaw(io.RawIOBase):
    """``tf.io.gfile.GFile`` (binary) as a raw stream, so ``io``'s buffers and text layer fit on it."""

    def __init__(self, path: str, mode: str):
        self._path = path
        self._mode = mode
        with _os_errors(path):
            self._f = _gfile().GFile(path, mode)

    def readable(self) -> bool:
        return "r" in self._mode

    def writable(self) -> bool:
        return "w" in self._mode or "a" in self._mode

    def seekable(self) -> bool:
        return self.readable()

    def readinto(self, b) -> int:
        with _os_errors(self._path):
            data = self._f.read(len(b))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        return n

    def readall(self) -> bytes:
        with _os_errors(self._path):
            return self._f.read()

    def write(self, b) -> int:
        data = bytes(b)
        with _os_errors(self._path):
            self._f.write(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with _os_errors(self._path):
            self._f.seek(offset, whence)
            return int(self._f.tell())

    def tell(self) -> int:
        with _os_errors(self._path):
            return int(self._f.tell())

    def close(self) -> None:
        if not self.closed:
            try:
                with _os_errors(self._path):
                    self._f.close()
            finally:
                super().close()


def open(path: PathLike, mode: str = "r", *, encoding: Optional[str] = None,  # noqa: A001 - mirrors builtins
         newline: Optional[str] = None):
    """Open a file for reading (``r``), writing (``w``) or appending (``a``), text or binary (``b``).

    Local paths: :func:`builtins.open`.  URLs: a buffered stream over ``tf.io.gfile.GFile``
    (seekable when reading); text modes decode/encode with ``encoding`` (UTF-8 by default).
    A URL opened for reading that does not exist raises ``FileNotFoundError`` at once; one
    opened with ``w`` is removed first, so that it is replaced on every filesystem.
    """
    path = _str(path)
    if not is_url(path):
        if "b" in mode:
            return builtins.open(path, mode)
        return builtins.open(path, mode, encoding=encoding or "utf-8", newline=newline)
    base = mode.replace("b", "").replace("t", "")
    if base not in ("r", "w", "a"):
        raise ValueError(f"mode {mode!r} is not supported for {path} (use r, w or a, with or without b)")
    if base == "r" and not isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    if base == "w" and isfile(path):
        remove(path)  # some filesystems (ram://) would append to the old content otherwise
    raw = _GFileRaw(path, base + "b")
    buffered = io.BufferedReader(raw, 1 << 20) if base == "r" else io.BufferedWriter(raw, 1 << 20)
    if "b" in mode:
        return buffered
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", newline=newline)


def read_bytes(path: PathLike) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def write_bytes(path: PathLike, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def json_ready(obj: Any, *, nan_as_null: bool = False) -> Any:
    """``obj`` with numpy scalars and arrays as Python numbers and lists (tuples as lists);
    with ``nan_as_null`` every non-finite float (NaN, inf) becomes ``None`` (JSON null)."""
    import math

    import numpy as np

    def clean(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            o = o.tolist()
        elif isinstance(o, np.generic):
            o = o.item()
        if isinstance(o, float):
            return None if nan_as_null and not math.isfinite(o) else o
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return clean(obj)


@contextlib.contextmanager
def atomic_output(path: PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[Any]:
    """A file opened for writing (``mode`` "wb" or "w", ``kwargs`` as for :func:`open`) under a
    temporary name next to ``path``, renamed to ``path`` when the block ends without an error
    (see :func:`replace`); on an error or interruption the temporary file is removed and
    ``path`` is untouched."""
    path = _str(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if exists(tmp):
                remove(tmp)
        raise


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = None, nan_as_null: bool = False) -> None:
    """Write ``obj`` as JSON to a temporary name, then rename it to ``path`` (:func:`atomic_output`).

    numpy scalars and arrays are written as numbers and lists (:func:`json_ready`);
    ``nan_as_null`` writes non-finite floats as ``null`` (strict JSON) instead of ``NaN``.
    """
    obj = json_ready(obj, nan_as_null=nan_as_null)
    with atomic_output(path, "w") as fh:
        json.dump(obj, fh, indent=indent)


def read_json(path: PathLike) -> Any:
    """``json.load`` of ``path`` (``json.JSONDecodeError`` if it is not valid JSON)."""
    with open(path, "r") as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------- ranged reads

class RangeReader:
    """Reads byte ranges of files, keeping one open handle per path.

    Local files: ``os.pread`` on a cached descriptor (no seek state; safe from many
    threads).  URLs: a cached ``GFile`` (seek + read under a lock per file): on ``gs://`` each
    read is a ranged request of about ``length`` bytes, whatever the size of the file.  After
    ``fork`` the cache of the parent is dropped (never closed from the child).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._handles: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _handle(self, path: str):
        if self._pid != os.getpid():
            self._pid, self._handles, self._locks = os.getpid(), {}, {}
        h = self._handles.get(path)
        if h is None:
            with self._guard:
                h = self._handles.get(path)
                if h is None:
                    if is_url(path):
                        if not isfile(path):
                            raise FileNotFoundError(errno.ENOENT, "no such file", path)
                        with _os_errors(path):
                            h = _gfile().GFile(path, "rb")
                        self._locks[path] = threading.Lock()
                    else:
                        h = os.open(path, os.O_RDONLY)
                    self._handles[path] = h
        return h

    def read(self, path: PathLike, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of ``path`` from byte ``offset`` (fewer only at the end of the file)."""
        path = _str(path)
        h = self._handle(path)
        if isinstance(h, int):
            return os.pread(h, length, offset)
        from data_pipeline.tf_utils import import_tensorflow
        tf = import_tensorflow()
        with self._locks[path], _os_errors(path):
            try:
                h.seek(offset)
            except tf.errors.OutOfRangeError:  # offset at or past the end: nothing to read
                return b""
            return h.read(length)

    def close(self) -> None:
        handles, self._handles, self._locks = self._handles, {}, {}
        if self._pid != os.getpid():
            self._pid = os.getpid()
            return
        for h in handles.values():
            with contextlib.suppress(Exception):
                if isinstance(h, int):
                    os.close(h)
                else:
                    h.close()

    def __getstate__(self):
        return {"handles": "not pickled"}  # (a non-empty state, so that __setstate__ runs)

    def __setstate__(self, state) -> None:
        self.__init__()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, modules may be gone already
            pass


_default_reader = RangeReader()


def read_range(path: PathLike, offset: int, length: int) -> bytes:
    """``length`` bytes of ``path`` at ``offset`` (one ranged read; handles are cached per path)."""
    return _default_reader.read(path, offset, length)
