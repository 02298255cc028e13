"""Pixel-shard building from footprint records: content, manifest, resumption, atomicity."""
import json
import os

import numpy as np
import pytest

from tests import ROOT
from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.data import tfrecord
from copgen_jax.modalities import ModalityError, build_registry
from copgen_jax.datasets import build
from tests.fixtures.footprints import UTM, footprints

NAMES = ("3d_cartesian_lat_lon", "DEM_DEM", "LULC_LULC", "S2L2A_B02_B03_B04_B08", "mean_timestamps")
REG = build_registry(NAMES, pixel_scale=4, downsample=4)
class Interrupted(Exception):
    pass


def failing_at(bad_cell):
    def read(cell):
        if cell == bad_cell:
            yield next(footprints(cell))
            raise Interrupted(cell)  # as if the build were killed mid-shard
        yield from footprints(cell)
    return read


def _build(out, read=footprints, cells=("c0", "c1", "c2")):
    return build.build_pixel_shards(str(out), REG, list(cells), read, name="copgen_test", progress=False)


def _records(out, manifest):
    got = {}
    for split in manifest["splits"].values():
        for s in split["shards"]:
            for data in tfrecord.read_records(os.path.join(out, s["file"])):
                rec = schema.decode_record(data, REG, schema.PIXELS, where=s["file"])
                got[rec["key"]] = rec
    return got


def test_build_writes_shards_and_manifest(tmp_path):
    manifest = _build(tmp_path)
    assert manifest["records"] == {"train": 8, "test": 4}
    files = sorted(f for f in os.listdir(tmp_path) if ".tfrecord-" in f)
    assert files == [f"copgen_test-{s}.tfrecord-{i:05d}-of-00003" for s in ("test", "train") for i in range(3)]
    assert manifest["schema"]["LULC_LULC"] == {"dtype": "float32", "shape": [10, 48, 48]}
    assert manifest["schema"]["DEM_DEM/present"] == {"dtype": "int64", "shape": []}
    # Every shard's sha256 is right, and the split files list matches the disk.
    assert shards.verify(str(tmp_path)) == manifest
    assert shards.shard_files(str(tmp_path), "test") == [str(tmp_path / "copgen_test-test.tfrecord-00001-of-00003")]

    records = _records(tmp_path, manifest)
    expected = {r["key"]: r for cell in ("c0", "c1", "c2") for r in footprints(cell)}
    assert records.keys() == expected.keys()
    for key, rec in records.items():
        src = expected[key]
        assert rec["split"] == src["split"] and rec["crs"] == "EPSG:32632" and (rec["row"], rec["col"]) == (src["row"], src["col"])
        assert rec["transform"] == UTM  # exact, through transform64
        for m in REG:
            assert rec["present"][m.name] == (m.name in src["pixels"])
            if m.name in src["pixels"]:
                np.testing.assert_array_equal(rec["values"][m.name], m.normalize(src["pixels"][m.name]))
    assert "DEM_DEM" not in records["c0/0/1_1"]["values"]

    # Statistics are those of the normalised values, over present records only.
    for name in ("DEM_DEM", "S2L2A_B02_B03_B04_B08", "LULC_LULC"):
        values = np.concatenate([rec["values"][name].ravel() for rec in records.values() if name in rec["values"]])
        st = manifest["statistics"][name]
        assert st["present"] == (9 if name == "DEM_DEM" else 12)
        np.testing.assert_allclose([st["mean"], st["std"], st["min"], st["max"]],
                                   [values.mean(), values.std(), values.min(), values.max()], rtol=1e-5)
    # TFDS metadata describes the same schema.
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert {s["name"]: s["shardLengths"] for s in info["splits"]} == {"train": ["4", "0", "4"], "test": ["0", "4", "0"]}


def test_rerun_skips_finished_shards(tmp_path):
    first = _build(tmp_path)
    stamps = {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path) if ".tfrecord-" in f}

    def must_not_read(cell):
        raise AssertionError(f"finished cell {cell} was read again")

    assert _build(tmp_path, read=must_not_read) == first
    assert stamps == {f: os.stat(tmp_path / f).st_mtime_ns for f in stamps}


def test_interrupted_build_leaves_no_partial_shard_under_a_final_name_and_resumes(tmp_path):
    with pytest.raises(Interrupted):
        _build(tmp_path, read=failing_at("c2"))
    finals = sorted(f for f in os.listdir(tmp_path) if ".tfrecord-" in f)
    assert finals == [f"copgen_test-{s}.tfrecord-{i:05d}-of-00003" for s in ("test", "train") for i in range(2)]
    assert not (tmp_path / "manifest.json").exists()
    # A kill -9 leaves debris: a partial file, and a final-named shard without its marker.
    (tmp_path / ".partial" / "copgen_test-train.tfrecord-00002-of-00003.123.abcd").write_bytes(b"\0" * 40)
    (tmp_path / "copgen_test-train.tfrecord-00002-of-00003").write_bytes(b"half a shard")
    stamp = os.stat(tmp_path / "copgen_test-train.tfrecord-00000-of-00003").st_mtime_ns

    manifest = _build(tmp_path)
    assert manifest["records"] == {"train": 8, "test": 4}
    assert os.stat(tmp_path / "copgen_test-train.tfrecord-00000-of-00003").st_mtime_ns == stamp  # kept
    shards.verify(str(tmp_path))
    assert len(_records(tmp_path, manifest)) == 12
    assert not (tmp_path / ".partial").exists()


def test_changed_plan_is_refused(tmp_path):
    _build(tmp_path)
    with pytest.raises(shards.BuildError, match="different plan.*units"):
        _build(tmp_path, cells=("c0", "c1"))


def test_verify_names_a_changed_shard(tmp_path):
    _build(tmp_path)
    path = tmp_path / "copgen_test-train.tfrecord-00002-of-00003"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(shards.BuildError, match="copgen_test-train.tfrecord-00002-of-00003: sha256"):
        shards.verify(str(tmp_path))


def test_bad_footprint_record_is_named(tmp_path):
    def bad(cell):
        rec = next(footprints(cell))
        rec["pixels"]["DEM_DEM"] = np.zeros((1, 20, 20), np.float32)
        yield rec

    with pytest.raises(ModalityError, match=r"'c0/0/0_0'.*DEM_DEM.*1, 16, 16"):
        _build(tmp_path, read=bad, cells=("c0",))

    def no_split(cell):
        rec = next(footprints(cell))
        del rec["split"]
        yield rec

    with pytest.raises(schema.ShardFormatError, match=r"'c0/0/0_0' lacks \['split'\]"):
        _build(tmp_path / "b", read=no_split, cells=("c0",))


def _same_set(a_dir, a, b_dir, b):
    """Two builds of the same units: the same files, bytes and manifest (but where they were built)."""
    assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
    for split in a["splits"].values():
        for s in split["shards"]:
            assert (a_dir / s["file"]).read_bytes() == (b_dir / s["file"]).read_bytes()


def test_an_executor_builds_the_same_set(tmp_path):
    """``executor`` (what Beam plugs into) runs the same group writer: the same shards, byte for byte."""
    calls = []

    def executor(build_group, jobs):
        calls.extend(g for g, _ in jobs)
        for job in reversed(jobs):  # any order, any process
            build_group(*job)

    pure = _build(tmp_path / "pure")
    other = build.build_pixel_shards(str(tmp_path / "ex"), REG, ["c0", "c1", "c2"], footprints, name="copgen_test",
                                     progress=False, executor=executor)
    assert calls == [0, 1, 2]
    _same_set(tmp_path / "pure", pure, tmp_path / "ex", other)


def test_beam_builds_the_same_set(tmp_path):
    """``--format=tfds``: the shard writer run by Apache Beam (the `beam` extra) gives the same files."""
    pytest.importorskip("apache_beam")
    from copgen_jax.datasets import tfds_builder

    pure = _build(tmp_path / "pure")
    manifest = build.build_pixel_shards(str(tmp_path / "beam"), REG, ["c0", "c1", "c2"], footprints,
                                        name="copgen_test", progress=False, executor=tfds_builder.on_beam)
    assert manifest["records"] == pure["records"] == {"train": 8, "test": 4}
    _same_set(tmp_path / "pure", pure, tmp_path / "beam", manifest)


def test_tfds_and_tf_read_the_set(tmp_path):
    """TFDS reads a built set with ``builder_from_directory``; its records parse with tf.io."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    pure_dir = tmp_path / "pure"
    pure = _build(pure_dir)
    ours = _records(pure_dir, pure)
    ds = tfds.builder_from_directory(str(pure_dir)).as_dataset(split="test")
    assert sorted(ex["key"].numpy().decode() for ex in ds) == [f"c1/0/{r}_{c}" for r in range(2) for c in range(2)]
    raw = next(iter(tf.data.TFRecordDataset(shards.shard_files(str(pure_dir), "train")[0])))
    ex = tf.io.parse_single_example(raw, {"S2L2A_B02_B03_B04_B08": tf.io.FixedLenFeature([4 * 48 * 48], tf.float32),
                                          "key": tf.io.FixedLenFeature([], tf.string)})
    np.testing.assert_array_equal(ex["S2L2A_B02_B03_B04_B08"].numpy(),
                                  ours[ex["key"].numpy().decode()]["values"]["S2L2A_B02_B03_B04_B08"].ravel())


def test_synthetic_source_end_to_end_through_the_cli(tmp_path):
    """`python -m copgen_jax.datasets.build --source=synthetic`: raw world, shards, manifest; a rerun reuses both."""
    import subprocess
    import sys

    out = tmp_path / "synth"
    cmd = [sys.executable, "-m", "copgen_jax.datasets.build", "--source=synthetic", "--config=configs/test.py", "--cells=1",
           "--observations=2", "--footprints_per_side=2", f"--out={out}"]
    root = ROOT
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "records/s" in run.stderr and "8 train records" in run.stdout
    manifest = shards.verify(str(out))
    assert sum(manifest["records"].values()) == 8 and (out / "raw" / "Core-S2L2A").is_dir()
    assert set(manifest["statistics"]) == {"3d_cartesian_lat_lon", "DEM_DEM", "S2L2A_B02_B03_B04_B08"}
    again = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already built, kept" in again.stderr
    other = subprocess.run(cmd[:-2] + ["--observations=3", f"--out={out}"], cwd=root, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode != 0 and "holds a synthetic world with" in other.stderr


def test_synthetic_held_out_cells_get_their_own_share_and_dates(tmp_path):
    """Many places with one date each to train on; a few held-out places seen on several dates;
    two worker processes write the same bytes as one."""
    reg = build_registry(("DEM_DEM", "S1RTC_vh_vv", "mean_timestamps"), pixel_scale=4, downsample=4)
    world = dict(cells=4, observations=1, footprints_per_side=1, test_fraction=0.5, test_observations=3)
    _, manifest = build.build("synthetic", str(tmp_path), reg, **world, progress=False)
    _, parallel = build.build("synthetic", str(tmp_path / "parallel"), reg, **world, workers=2, progress=False)
    digests = lambda m: [s["sha256"] for split in m["splits"].values() for s in split["shards"]]  # noqa: E731
    assert digests(parallel) == digests(manifest)
    assert manifest["records"] == {"train": 2, "test": 6}
    assert manifest["source"]["test_observations"] == 3
    dates = {}
    for s in manifest["splits"]["test"]["shards"]:
        for data in tfrecord.read_records(os.path.join(tmp_path, s["file"])):
            rec = schema.decode_record(data, reg, schema.PIXELS, where=s["file"])
            dates.setdefault(rec["cell_id"], set()).add(rec["date"])
    assert len(dates) == 2 and all(len(d) == 3 for d in dates.values())
    with pytest.raises(build.BuildError, match="holds a synthetic world with"):
        build.build("synthetic", str(tmp_path), reg, **{**world, "test_observations": 2}, progress=False)
