"""Local paths and URIs (``gs://bucket/...``) through ``etils.epath``, and what epath lacks.

Every stage takes its paths through ``path()``: an ``epath.Path``, which goes
through ``os`` for local paths and through fsspec for ``gs://`` (``gcsfs``),
``s3://``, ``az://`` (or ``tf.io.gfile`` where TensorFlow is installed). The
helpers here add what epath has not: an unknown URI scheme is refused (epath
would take ``nosuchfs://b`` for a local directory), whole-file writes that are
atomic (temp file, ``fsync``, ``os.replace`` locally; object stores publish an
object only once it is complete), and a local stand-in for libraries that can
only write local files (rasterio's GeoTIFFs, matplotlib's PNGs).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Iterator

from etils import epath

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
REMOTE = ("gs", "s3", "az", "hf")


def scheme(p) -> str | None:
    """``"gs"`` for ``gs://b/x``; None for a local path."""
    m = _SCHEME.match(os.fspath(p))
    return m.group(1) if m else None


def path(p) -> epath.Path:
    """An ``epath.Path`` of a local path (``file://`` too) or a URI of a scheme epath knows."""
    s = os.fspath(p)
    proto = scheme(s)
    if proto == "file":
        s = s[len("file://"):]
    elif proto is not None and proto not in REMOTE:
        raise ValueError(f"{s}: {proto}:// paths are not supported (use a local path or one of "
                         f"{', '.join(f'{r}://' for r in REMOTE)})")
    return epath.Path(s)


def is_local(p) -> bool:
    return scheme(p) in (None, "file")


def absolute(p) -> epath.Path:
    """Absolute local paths; URIs as they are."""
    return path(p).resolve() if is_local(p) else path(p)


def glob(pattern) -> list[str]:
    """Sorted matches of a glob whose wildcards may be in any part below a URI's bucket."""
    s = os.fspath(path(pattern))
    parts = s.split("/")
    i = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    if i == len(parts):
        return [s] if path(s).exists() else []
    base = "/".join(parts[:i]) or ("/" if s.startswith("/") else ".")
    return sorted(os.fspath(p) for p in path(base).glob("/".join(parts[i:])))


def write_bytes(p, data: bytes) -> None:
    """Atomic whole-file write: readers see the old file or the new one, never half of one."""
    target = path(p)
    if not is_local(p):
        target.write_bytes(data)  # an object appears only once complete
        return
    tmp = f"{os.fspath(target)}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(p, text: str) -> None:
    write_bytes(p, text.encode())


def write_json(p, obj: Any, **kwargs) -> None:
    write_text(p, json.dumps(obj, **({"indent": 1, "sort_keys": True} | kwargs)))


def read_json(p) -> Any:
    return json.loads(path(p).read_text())


@contextlib.contextmanager
def local_file(p) -> Iterator[str]:
    """A local path to write ``p`` through: ``p`` itself, or a temp file copied to ``p`` on success."""
    target = path(p)
    if is_local(p):
        target.parent.mkdir(parents=True, exist_ok=True)
        yield os.fspath(target)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, target.name)
        yield local
        with open(local, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
