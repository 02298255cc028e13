"""TFRecord framing and tf.train.Example codec: round trips, wire compatibility, corruption."""
import logging
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from copgen_jax.data import tfrecord as tfr


def _example_class():
    """tf.train.Example built from a hand-written descriptor: an independent protobuf codec."""
    f = descriptor_pb2.FileDescriptorProto(name="copgen_test_example.proto", package="copgen.test",
                                           syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    for name, typ in (("BytesList", T.TYPE_BYTES), ("FloatList", T.TYPE_FLOAT), ("Int64List", T.TYPE_INT64)):
        m = f.message_type.add(name=name)
        m.field.add(name="value", number=1, type=typ, label=T.LABEL_REPEATED)
    feat = f.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for i, name in enumerate(("bytes_list", "float_list", "int64_list")):
        feat.field.add(name=name, number=i + 1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                       type_name=".copgen.test." + ("BytesList", "FloatList", "Int64List")[i], oneof_index=0)
    feats = f.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                    type_name=".copgen.test.Feature")
    feats.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                    type_name=".copgen.test.Features.FeatureEntry")
    ex = f.message_type.add(name="Example")
    ex.field.add(name="features", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                 type_name=".copgen.test.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("copgen.test.Example"))


FEATURES = {
    "key": b"cell/0/1_2",
    "split": "train",
    "pixels": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "flags": np.array([0, 1, 1], np.int64),
    "neg": np.array([-5, 2**40], np.int64),
    "empty": np.zeros(0, np.float32),
    "names": [b"a", b"bc"],
}


def _check_decoded(d):
    assert d["key"] == [b"cell/0/1_2"] and d["split"] == [b"train"] and d["names"] == [b"a", b"bc"]
    np.testing.assert_array_equal(d["pixels"], FEATURES["pixels"].ravel())
    assert d["pixels"].dtype == np.float32
    np.testing.assert_array_equal(d["flags"], [0, 1, 1])
    np.testing.assert_array_equal(d["neg"], [-5, 2**40])
    assert len(d["empty"]) == 0


def test_crc32c_known_values():
    # RFC 3720 test vectors.
    assert tfr.crc32c(b"123456789") == 0xE3069283
    assert tfr.crc32c(bytes(32)) == 0x8A9136AA
    assert tfr.crc32c(memoryview(b"123456789")) == 0xE3069283


def test_example_round_trip_and_wire_compatibility():
    data = tfr.encode_example(FEATURES)
    _check_decoded(tfr.decode_example(data))
    # An independent protobuf implementation reads our bytes...
    Example = _example_class()
    msg = Example.FromString(data)
    feat = msg.features.feature
    assert feat["key"].bytes_list.value == [b"cell/0/1_2"]
    np.testing.assert_array_equal(feat["pixels"].float_list.value, FEATURES["pixels"].ravel())
    assert list(feat["neg"].int64_list.value) == [-5, 2**40]
    # ...and we read its bytes, packed or not.
    _check_decoded(tfr.decode_example(msg.SerializeToString()))
    # Unpacked repeated scalars are valid protobuf too (older writers emit them).
    unpacked = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.5, -2.0))
    feature = tfr._field(2, unpacked)
    ex = tfr._field(1, tfr._field(1, tfr._field(1, b"u") + tfr._field(2, feature)))
    np.testing.assert_array_equal(tfr.decode_example(ex)["u"], [1.5, -2.0])


def test_record_round_trip(tmp_path):
    path = tmp_path / "a.tfrecord"
    records = [tfr.encode_example({"i": np.array([i]), "x": np.full(i, i, np.float32)}) for i in range(5)]
    assert tfr.write_records(path, records) == 5
    assert list(tfr.read_records(path)) == records
    # Frame layout: 8-byte length, 4-byte masked CRC, data, 4-byte masked CRC.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n == len(records[0]) and raw[12:12 + n] == records[0]
    assert struct.unpack("<I", raw[12 + n:16 + n])[0] == tfr.masked_crc32c(records[0])
    # Resuming mid-file from a saved offset.
    reader = tfr.TFRecordReader(path)
    next(reader), next(reader)
    resumed = tfr.TFRecordReader(path, offset=reader.offset, index=reader.index)
    assert list(resumed) == records[2:] and resumed.index == 5


def _five_records(tmp_path):
    path = tmp_path / "shard.tfrecord"
    records = [tfr.encode_example({"x": np.full(10, i, np.float32)}) for i in range(5)]
    tfr.write_records(path, records)
    return path, records


def test_truncated_file_names_file_and_record(tmp_path):
    path, records = _five_records(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])  # cut into the last record's data
    with pytest.raises(tfr.CorruptRecordError, match=r"shard\.tfrecord: record 4 .*truncated"):
        list(tfr.read_records(path))
    path.write_bytes(raw[:len(raw) - 3 * (16 + len(records[0])) + 5])  # cut into record 2's header
    with pytest.raises(tfr.CorruptRecordError, match=r"record 2 .*truncated header"):
        list(tfr.read_records(path))


def test_flipped_byte_names_file_and_record(tmp_path):
    path, records = _five_records(tmp_path)
    frame = 16 + len(records[0])
    raw = bytearray(path.read_bytes())
    raw[frame + 12 + 3] ^= 0x40  # record 1's data
    path.write_bytes(bytes(raw))
    with pytest.raises(tfr.CorruptRecordError, match=rf"record 1 \(byte offset {frame}\): data CRC"):
        list(tfr.read_records(path))
    raw = bytearray(path.read_bytes())
    raw[frame + 12 + 3] ^= 0x40  # repair, then damage record 3's length
    raw[3 * frame + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(tfr.CorruptRecordError, match=r"record 3 .*length CRC"):
        list(tfr.read_records(path))


def test_skip_and_count(tmp_path, caplog):
    path, records = _five_records(tmp_path)
    frame = 16 + len(records[0])
    raw = bytearray(path.read_bytes())
    raw[frame + 20] ^= 0xFF  # record 1's data: skippable, reading goes on
    raw[4 * frame + 2] ^= 0xFF  # record 4's length: the rest of the file is lost
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        reader = tfr.TFRecordReader(path, on_corrupt="skip")
        got = list(reader)
    assert got == [records[0], records[2], records[3]]
    assert reader.skipped == 2
    assert "record 1" in caplog.text and "record 4" in caplog.text
    with pytest.raises(ValueError, match="on_corrupt"):
        tfr.TFRecordReader(path, on_corrupt="ignore")
