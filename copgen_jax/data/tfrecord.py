"""TFRecord files and ``tf.train.Example`` messages without TensorFlow.

A TFRecord file is a sequence of frames::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little endian). Both checksums are written and verified here, so a truncated
or corrupt shard is found and named (file, record index, byte offset) instead of
feeding garbage to training. ``data`` is a serialised ``tf.train.Example``; the
small protobuf codec below covers exactly that message family::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                       Int64List int64_list = 3; } }

Float lists decode to zero-copy ``float32`` views of the record, which is what
makes parsing large latent records cheap. Files written here are
byte-compatible with ``tf.io.TFRecordWriter`` and parse with
``tf.io.parse_single_example``; files TensorFlow writes read back here. Paths
may be URIs (``gs://...``, through ``copgen_jax.storage``).

Why our own and not a library's: Grain's ``TFRecordIterDataset`` (grain 0.2)
verifies neither checksum and opens local files only; ``tf.data`` and
``tfds`` would make TensorFlow a training dependency; protobuf's generated
``Example`` copies every float list into a Python container. This module is the
one framing and Example codec of the project: ``copgen_jax.data.shards``
writes every shard set with it (``datasets.build`` locally, on Beam too), and
``data.input_pipeline`` reads them with it. CRC-32C itself is
``google-crc32c``'s (hardware, GB/s).
"""
from __future__ import annotations

import logging
import os
import struct
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from copgen_jax import storage

import google_crc32c

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# CRC32C (Castagnoli) and TFRecord's masking.
# ---------------------------------------------------------------------------


def crc32c(data) -> int:
    """CRC-32C of ``data`` (bytes-like)."""
    return google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)


def masked_crc32c(data) -> int:
    """TFRecord's masked checksum: rotate right by 15, add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Framing.
# ---------------------------------------------------------------------------


class CorruptRecordError(ValueError):
    """A TFRecord frame failed its length or CRC check, or the file is truncated."""


class TFRecordWriter:
    """Writes TFRecord frames to ``path`` (use as a context manager)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._f: BinaryIO = storage.path(self.path).open("wb")
        self._local = storage.is_local(self.path)
        self.records = 0

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._f.write(header + struct.pack("<I", masked_crc32c(header)))
        self._f.write(data)
        self._f.write(struct.pack("<I", masked_crc32c(data)))
        self.records += 1

    def close(self, sync: bool = True) -> None:
        if self._f.closed:
            return
        self._f.flush()
        if sync and self._local:  # the caller renames the file next; it must be on disk first
            os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TFRecordReader:
    """Reads frames of one file, verifying both CRCs.

    ``offset``/``index`` start mid-file (a resumed iterator). With
    ``on_corrupt="raise"`` (default) a bad frame raises ``CorruptRecordError``
    naming the file, record index and byte offset. With ``"skip"`` a record
    whose data CRC fails is skipped and counted in ``skipped``; a bad length
    header or a truncation ends the file (nothing after it can be located), and
    counts as one skipped record. Every skip is logged.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0, index: int = 0,
                 on_corrupt: str = "raise", skipped: int = 0):
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        self.path = os.fspath(path)
        self.offset, self.index, self.skipped = offset, index, skipped
        self.on_corrupt = on_corrupt
        self._f = storage.path(self.path).open("rb")
        self._f.seek(offset)  # on object stores a ranged read: resuming does not re-read the file
        self._done = False

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        return self

    def _bad(self, what: str, fatal: bool) -> None:
        msg = (f"{self.path}: record {self.index} (byte offset {self.offset}): {what}. "
               "The shard is damaged: rebuild it (the build skips finished shards, so delete "
               "this one first), or read with on_corrupt='skip' to skip damaged records.")
        if self.on_corrupt == "raise":
            raise CorruptRecordError(msg)
        self.skipped += 1
        log.warning("skipping: %s", msg if not fatal else msg + " (rest of file unreadable)")
        if fatal:
            self._done = True

    def __next__(self) -> bytes:
        while not self._done:
            header = self._f.read(12)
            if not header:
                break
            if len(header) < 12:
                self._bad(f"truncated header ({len(header)} of 12 bytes)", fatal=True)
                break
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                self._bad("length CRC mismatch", fatal=True)
                break
            data, stored = self._f.read(length), self._f.read(4)  # no slicing copy of data
            if len(data) < length or len(stored) < 4:
                self._bad(f"truncated data ({len(data) + len(stored)} of {length + 4} bytes)", fatal=True)
                break
            frame = 12 + length + 4
            if masked_crc32c(data) != struct.unpack("<I", stored)[0]:
                self._bad("data CRC mismatch", fatal=False)  # names this record, then moves on
                self.offset, self.index = self.offset + frame, self.index + 1
                continue
            self.offset, self.index = self.offset + frame, self.index + 1
            return data
        self._done = True
        raise StopIteration


def read_records(path, on_corrupt: str = "raise") -> Iterator[bytes]:
    """All records of one file (verified)."""
    with TFRecordReader(path, on_corrupt=on_corrupt) as reader:
        yield from reader


def write_records(path, records) -> int:
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
        return w.records


# ---------------------------------------------------------------------------
# tf.train.Example: a minimal protobuf codec.
# ---------------------------------------------------------------------------

_LEN, _I64, _VARINT, _I32 = 2, 1, 0, 5


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | _LEN) + _varint(len(payload)) + payload


def _encode_feature(value: Any) -> bytes:
    """One ``Feature`` from bytes/str (or a list of them), ints, or floats."""
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
        items = b"".join(_field(1, v.encode() if isinstance(v, str) else v) for v in value)
        return _field(1, items)
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        packed = arr.astype("<f4", copy=False).tobytes()
        return _field(2, _field(1, packed) if packed else b"")
    if arr.dtype.kind in "iub":
        packed = b"".join(_varint(int(v)) for v in arr.reshape(-1))
        return _field(3, _field(1, packed) if packed else b"")
    raise TypeError(f"cannot store {type(value).__name__} of dtype {arr.dtype} in a tf.train.Example "
                    "(use bytes/str, integers or floats)")


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialise ``{name: value}`` as a ``tf.train.Example`` (keys sorted: deterministic bytes).

    bytes/str (or lists of them) -> bytes_list; float arrays -> float_list
    (float32, flattened); integer/bool arrays -> int64_list.
    """
    entries = b"".join(
        _field(1, _field(1, k.encode()) + _field(2, _encode_feature(features[k])))
        for k in sorted(features))
    return _field(1, entries)


def _read_varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int = 0, end: int | None = None):
    """Yield (field number, wire type, value) where LEN values are (start, end) slices."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _LEN:
            n, pos = _read_varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        elif wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _I32:
            value, pos = (pos, pos + 4), pos + 4
        elif wire == _I64:
            value, pos = (pos, pos + 8), pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
        if pos > end:
            raise ValueError("protobuf message truncated")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf, start, end):
    for kind, _, (s, e) in _fields(buf, start, end):
        if kind == 1:
            return [bytes(buf[a:b]) for n, w, (a, b) in _fields(buf, s, e) if n == 1]
        if kind == 2:
            # packed (one LEN run) or unpacked (one fixed32 per value): same bytes
            parts = [np.frombuffer(buf[a:b], "<f4") for n, _, (a, b) in _fields(buf, s, e) if n == 1]
            return parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, "<f4")])
        if kind == 3:
            values = []
            for n, w, v in _fields(buf, s, e):
                if n != 1:
                    continue
                if w == _LEN:  # packed
                    p, q = v
                    while p < q:
                        x, p = _read_varint(buf, p)
                        values.append(_signed(x))
                else:
                    values.append(_signed(v))
            return np.asarray(values, np.int64)
    return []  # a Feature with no kind set: an empty list


def _rv(b: bytes, pos: int) -> tuple[int, int]:
    x = b[pos]
    return (x, pos + 1) if x < 0x80 else _read_varint(b, pos)


def _decode_feature_fast(b: bytes, mv, s: int, e: int):
    """The common cases (one packed float run, one bytes value, one small int) without generators."""
    if s + 1 < e:
        tag, n, pos = b[s], b[s + 1], s + 2
        if n >= 0x80:
            n, pos = _read_varint(b, s + 1)
        if pos + n == e and n:
            first = b[pos]
            if tag == 0x12 and first == 0x0A:  # FloatList, one packed run
                m, p = _rv(b, pos + 1)
                if p + m == e:
                    return np.frombuffer(mv[p:e], "<f4")
            elif tag == 0x1A and n == 3 and first == 0x0A and b[pos + 1] == 1 and b[pos + 2] < 0x80:  # Int64List [v < 128]
                return np.array([b[pos + 2]], np.int64)
            elif tag == 0x0A and first == 0x0A:  # BytesList, one value
                m, p = _rv(b, pos + 1)
                if p + m == e:
                    return [b[p:e]]
    return _decode_feature(mv, s, e)


def decode_example(data: bytes) -> dict[str, Any]:
    """Parse a serialised ``tf.train.Example`` into ``{name: value}``.

    bytes_list -> list of bytes; float_list -> float32 array (a read-only view
    of ``data``); int64_list -> int64 array.
    """
    b = data if isinstance(data, bytes) else bytes(data)
    mv = memoryview(b)
    out = {}
    for n, _, (s, e) in _fields(mv):
        if n != 1:
            continue
        pos = s
        while pos < e:  # Features: map entries only (field 1, LEN); tags of fields < 16 are one byte
            tag, length = b[pos], b[pos + 1]
            pos += 2
            if length >= 0x80:
                length, pos = _read_varint(b, pos - 1)
            if tag != 0x0A:
                raise ValueError(f"malformed tf.train.Features: tag {tag} at byte {pos}")
            p, end = pos, pos + length
            key, value = None, []
            while p < end:  # entry: key = 1, value = 2, both LEN
                t, m = b[p], b[p + 1]
                p += 2
                if m >= 0x80:
                    m, p = _read_varint(b, p - 1)
                if t == 0x0A:
                    key = b[p:p + m].decode()
                elif t == 0x12:
                    value = _decode_feature_fast(b, mv, p, p + m)
                p += m
            if key is not None:
                out[key] = value
            pos = end
    return out
