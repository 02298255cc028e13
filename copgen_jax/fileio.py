"""Paths that are local files or URIs (``gs://bucket/...``, ``memory://...``).

Shards and run directories may live on a remote filesystem (a TPU pod reads
``gs://`` shards and writes its workdir there). Paths with a URI scheme go
through ``fsspec`` (installed with Orbax, which needs ``etils[epath]``); the
scheme's own package must be installed too (``gs://``: ``gcsfs``). Plain paths
go through ``os`` and the builtin ``open``, so local reading keeps its speed and
its semantics (``fsync``, atomic ``os.replace``).
"""
from __future__ import annotations

import builtins
import glob as _glob
import os
import posixpath
import re
from typing import IO

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class FileSystemUnavailable(ImportError):
    """A path's URI scheme has no filesystem installed."""


def scheme(path) -> str | None:
    """``"gs"`` for ``gs://b/x``; None for a local path."""
    m = _SCHEME.match(os.fspath(path))
    return m.group(1) if m else None


def is_local(path) -> bool:
    return scheme(path) in (None, "file")


def filesystem(path):
    """The fsspec filesystem of a URI; a clear error naming the package to install if it is missing."""
    import fsspec
    from fsspec.registry import known_implementations

    proto = scheme(path)
    try:
        return fsspec.filesystem(proto)
    except (ImportError, ValueError) as e:
        known = known_implementations.get(proto)
        package = known["class"].split(".")[0] if known else None
        hint = (f"pip install {package}" if package else
                f"install an fsspec implementation registered for {proto!r} "
                "(see fsspec's list of known implementations), or use a local path")
        raise FileSystemUnavailable(f"{os.fspath(path)}: no filesystem for {proto}:// paths is available "
                                    f"({e}); {hint}") from e


def _local(path) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def open(path, mode: str = "r", **kwargs) -> IO:  # noqa: A001 - the module is used as fileio.open
    if is_local(path):
        return builtins.open(_local(path), mode, **kwargs)
    return filesystem(path).open(os.fspath(path), mode, **kwargs)


def exists(path) -> bool:
    return os.path.exists(_local(path)) if is_local(path) else filesystem(path).exists(os.fspath(path))


def isdir(path) -> bool:
    return os.path.isdir(_local(path)) if is_local(path) else filesystem(path).isdir(os.fspath(path))


def getsize(path) -> int:
    return os.path.getsize(_local(path)) if is_local(path) else filesystem(path).size(os.fspath(path))


def listdir(path) -> list[str]:
    """Names (not paths) of the entries of a directory."""
    if is_local(path):
        return os.listdir(_local(path))
    return [posixpath.basename(p.rstrip("/")) for p in filesystem(path).ls(os.fspath(path), detail=False)]


def glob(pattern) -> list[str]:
    """Sorted matches; remote ones keep their scheme (so they can be opened again)."""
    if is_local(pattern):
        return sorted(_glob.glob(_local(pattern)))
    fs = filesystem(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(os.fspath(pattern)))


def makedirs(path) -> None:
    """``mkdir -p`` (object stores have no directories: there it only checks the filesystem)."""
    if is_local(path):
        os.makedirs(_local(path), exist_ok=True)
    else:
        filesystem(path).makedirs(os.fspath(path), exist_ok=True)


def join(path, *parts) -> str:
    path = os.fspath(path)
    return os.path.join(path, *parts) if is_local(path) else posixpath.join(path, *parts)


def abspath(path) -> str:
    """Absolute local paths; URIs as they are."""
    return os.path.abspath(_local(path)) if is_local(path) else os.fspath(path)


def read_text(path) -> str:
    with open(path, "r") as f:
        return f.read()


def write_text(path, text: str) -> None:
    """Whole-file write (on object stores an object appears only when complete)."""
    with open(path, "w") as f:
        f.write(text)
