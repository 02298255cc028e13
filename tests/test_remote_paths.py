"""Every stage on ``gs://``: shards, manifests, workdir config, checkpoints, metrics, outputs (a fake GCS)."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from copgen_jax import checkpoint, storage
from copgen_jax.data import input_pipeline
from copgen_jax.data import shards
from copgen_jax.data import tfrecord
from copgen_jax.trainers.backbone import latent_shards
from copgen_jax.trainers.metric_writer import MetricLogger
from tests.fixtures.fake_gcs import fake_gcs  # noqa: F401 - the fixture
from tests.fixtures.latent_shards import CFG, REG


@pytest.fixture()
def remote_set(latent_dir, fake_gcs):  # noqa: F811
    """A copy of the built set on gs:// (as a finished set is copied to a bucket)."""
    remote = f"{fake_gcs.uri}/lat"
    shutil.copytree(latent_dir, fake_gcs.local(remote))
    return remote


def _names(paths):
    return [p.rsplit("/", 1)[-1] for p in paths]


def test_resolve_directory_and_glob(latent_dir, remote_set):
    local = shards.resolve_shards(latent_dir)
    from_dir = shards.resolve_shards(remote_set)
    assert from_dir == [f"{remote_set}/{n}" for n in _names(local)]
    from_glob = shards.resolve_shards(f"{remote_set}/lat-train.tfrecord-*")
    assert all(p.startswith("gs://") for p in from_glob)
    assert _names(from_glob) == [os.path.basename(p) for p in sorted(local)]
    assert shards.load_manifest(remote_set) == shards.load_manifest(latent_dir)
    assert shards.verify(remote_set)["records"]["train"] == 20  # sha256 of every remote shard
    with pytest.raises(FileNotFoundError, match=r"gs://.*/nothing/manifest.json not found"):
        shards.load_manifest(remote_set.replace("/lat", "/nothing"))
    with pytest.raises(FileNotFoundError, match="no train shards"):
        shards.resolve_shards(f"{remote_set}/*.missing")


def test_reader_checks_crc_and_resumes_from_offset(latent_dir, remote_set, fake_gcs):  # noqa: F811
    local, remote = shards.shard_files(latent_dir)[0], shards.shard_files(remote_set)[0]
    expected = list(tfrecord.read_records(local))
    assert list(tfrecord.read_records(remote)) == expected
    with tfrecord.TFRecordReader(remote) as r:
        next(r), next(r)
        offset, index = r.offset, r.index
    with tfrecord.TFRecordReader(remote, offset=offset, index=index) as r:
        assert list(r) == expected[2:] and r.index == len(expected)
    with open(fake_gcs.local(remote), "r+b") as f:
        f.seek(offset + 20)  # inside record 2's data
        byte = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(tfrecord.CorruptRecordError, match=rf"{remote}: record 2 \(byte offset {offset}\)"):
        list(tfrecord.read_records(remote))


def test_writer_to_remote(fake_gcs):  # noqa: F811
    path = f"{fake_gcs.uri}/w.tfrecord"
    records = [b"a", b"", b"x" * 1000]
    assert tfrecord.write_records(path, records) == 3
    assert list(tfrecord.read_records(path)) == records
    assert os.path.exists(fake_gcs.local(path))


def test_build_shards_on_remote(fake_gcs):  # noqa: F811
    from tests.fixtures.latent_shards import latent_cell
    out = f"{fake_gcs.uri}/built"
    manifest = shards.build_shards(out, ["c1", "c2"], latent_cell, registry=REG, kind="latents", name="lat",
                                   progress=False)
    assert manifest["records"]["train"] == 10
    assert shards.verify(out)["records"] == manifest["records"]
    assert not storage.path(out).joinpath(shards.PARTIAL).exists()


def test_grain_pipeline_same_batches_and_resume(latent_dir, remote_set):
    def it(spec):
        return input_pipeline.make_latent_iterator(CFG, REG, shards.resolve_shards(spec), batch_size=4, seed=0)

    local, remote = it(latent_dir), it(remote_set)
    for _ in range(3):
        a, b = next(local), next(remote)
        for name in REG.names:
            np.testing.assert_array_equal(a["latents"][name], b["latents"][name])
            np.testing.assert_array_equal(a["present"][name], b["present"][name])
    state = json.loads(json.dumps(remote.get_state()))
    want = next(remote)
    resumed = it(remote_set)
    resumed.set_state(state)
    got = next(resumed)
    for name in REG.names:
        np.testing.assert_array_equal(got["latents"][name], want["latents"][name])


def test_latent_shards_reads_remote_scale_factors(remote_set):
    manifest = shards.load_manifest(remote_set)
    name = "S2L2A_B02_B03_B04_B08"
    manifest["registry"][name]["scale_factor"] = 0.25
    storage.write_text(f"{remote_set}/manifest.json", json.dumps(manifest))
    files, registry = latent_shards(remote_set, REG)
    assert registry[name].scale_factor == 0.25 and REG[name].scale_factor != 0.25
    assert len(files) == 4


def test_unknown_scheme_names_path():
    with pytest.raises(ValueError, match=r"nosuchfs://bucket/set: nosuchfs:// paths are not supported"):
        shards.resolve_shards("nosuchfs://bucket/set")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_gs_without_gcsfs_names_the_package():
    with pytest.raises(ImportError, match=r"gcsfs"):
        shards.resolve_shards("gs://b/latents")


def test_workdir_config_and_metrics_on_remote(fake_gcs, tmp_path, monkeypatch):  # noqa: F811
    from tensorboardX.proto import event_pb2

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a stray local write would land here
    workdir = f"{fake_gcs.uri}/run"
    checkpoint.save_config(workdir, CFG)
    assert checkpoint.load_config(workdir).to_dict() == checkpoint._tuples(CFG.to_dict())
    assert os.path.exists(fake_gcs.local(f"{workdir}/config.json"))
    # (Orbax writes arrays to gs:// through TensorStore's own GCS driver, which no fsspec fake reaches)
    assert os.fspath(checkpoint.checkpoint_dir(workdir)) == f"{workdir}/checkpoints"
    logger = MetricLogger(workdir, global_batch=8)
    logger.write(1, {"loss": np.float32(0.5)})
    logger.write(2, {"loss": np.float32(0.25)})
    logger.close()
    (events,) = storage.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    assert events.startswith("gs://")
    scalars = [(e.step, v.tag, v.simple_value) for e in map(event_pb2.Event.FromString, tfrecord.read_records(events))
               for v in e.summary.value]
    assert (1, "loss", 0.5) in scalars and (2, "loss", 0.25) in scalars
    assert any(tag == "examples_per_s" for _, tag, _ in scalars)
    assert os.listdir(tmp_path / "cwd") == []  # nothing went to a local directory named after the scheme


def test_outputs_on_remote(fake_gcs):  # noqa: F811
    from copgen_jax.inference import geo
    m = REG["DEM_DEM"]
    footprint = geo.Footprint.from_grid("EPSG:32632", (10.0, 0.0, 399960.0, 0.0, -10.0, 5100000.0), 192)
    path = geo.write_raster(f"{fake_gcs.uri}/out/dem.tif", np.ones(m.physical_shape, np.float32), m, footprint)
    assert os.path.getsize(fake_gcs.local(path)) > 0
    raster = geo.read_condition(path, m)
    np.testing.assert_array_equal(raster.data, np.ones(m.physical_shape))
    storage.write_json(f"{fake_gcs.uri}/out/x.json", {"a": 1})
    assert storage.read_json(f"{fake_gcs.uri}/out/x.json") == {"a": 1}
