"""Shards and run directories on a non-local filesystem: fsspec's in-process ``memory://``."""
import importlib.util
import json
import os
import uuid

import fsspec
import numpy as np
import pytest

from copgen_jax import checkpoint, fileio
from copgen_jax.data import input_pipeline
from copgen_jax.data import shards
from copgen_jax.data import tfrecord
from copgen_jax.trainers.backbone import latent_shards
from copgen_jax.trainers.metric_writer import MetricLogger
from tests.fixtures.latent_shards import CFG, REG

MEM = fsspec.filesystem("memory")


@pytest.fixture()
def remote_root():
    root = f"memory://{uuid.uuid4().hex}"
    yield root
    if MEM.exists(root):
        MEM.rm(root, recursive=True)


@pytest.fixture()
def remote_set(latent_dir, remote_root):
    """A copy of the built set on memory:// (as a finished set is copied to a bucket)."""
    remote = f"{remote_root}/lat"
    MEM.put(latent_dir, remote, recursive=True)
    return remote


def _names(paths):
    return [p.rsplit("/", 1)[-1] for p in paths]


def test_resolve_directory_and_glob(latent_dir, remote_set):
    local = shards.resolve_shards(latent_dir)
    from_dir = shards.resolve_shards(remote_set)
    assert from_dir == [f"{remote_set}/{n}" for n in _names(local)]
    from_glob = shards.resolve_shards(f"{remote_set}/lat-train.tfrecord-*")
    assert all(p.startswith("memory://") for p in from_glob)
    assert _names(from_glob) == [os.path.basename(p) for p in sorted(local)]
    assert shards.load_manifest(remote_set) == shards.load_manifest(latent_dir)
    assert shards.verify(remote_set)["records"]["train"] == 20  # sha256 of every remote shard
    with pytest.raises(FileNotFoundError, match=r"memory://.*/nothing/manifest.json not found"):
        shards.load_manifest(remote_set.replace("/lat", "/nothing"))
    with pytest.raises(FileNotFoundError, match="no train shards"):
        shards.resolve_shards(f"{remote_set}/*.missing")


def test_reader_checks_crc_and_resumes_from_offset(latent_dir, remote_set):
    local, remote = shards.shard_files(latent_dir)[0], shards.shard_files(remote_set)[0]
    expected = list(tfrecord.read_records(local))
    assert list(tfrecord.read_records(remote)) == expected
    with tfrecord.TFRecordReader(remote) as r:
        next(r), next(r)
        offset, index = r.offset, r.index
    with tfrecord.TFRecordReader(remote, offset=offset, index=index) as r:
        assert list(r) == expected[2:] and r.index == len(expected)
    raw = bytearray(MEM.cat_file(remote))
    raw[offset + 20] ^= 0xFF  # inside record 2's data
    MEM.pipe_file(remote, bytes(raw))
    with pytest.raises(tfrecord.CorruptRecordError, match=rf"{remote}: record 2 \(byte offset {offset}\)"):
        list(tfrecord.read_records(remote))


def test_writer_to_remote(remote_root):
    path = f"{remote_root}/w.tfrecord"
    records = [b"a", b"", b"x" * 1000]
    assert tfrecord.write_records(path, records) == 3
    assert list(tfrecord.read_records(path)) == records


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
    fileio.write_text(f"{remote_set}/manifest.json", json.dumps(manifest))
    files, registry = latent_shards(remote_set, REG)
    assert registry[name].scale_factor == 0.25 and REG[name].scale_factor != 0.25
    assert len(files) == 4


def test_unknown_scheme_names_path_and_fix():
    with pytest.raises(fileio.FileSystemUnavailable, match=r"nosuchfs://bucket/set: .*install"):
        shards.resolve_shards("nosuchfs://bucket/set")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_gs_without_gcsfs_names_the_package():
    with pytest.raises(fileio.FileSystemUnavailable, match=r"gs://b/latents: .*pip install gcsfs"):
        shards.resolve_shards("gs://b/latents")


def test_workdir_config_and_metrics_on_remote(remote_root):
    from tensorboardX.proto import event_pb2

    workdir = f"{remote_root}/run"
    checkpoint.save_config(workdir, CFG)
    assert checkpoint.load_config(workdir).to_dict() == checkpoint._tuples(CFG.to_dict())
    logger = MetricLogger(workdir, global_batch=8)
    logger.write(1, {"loss": np.float32(0.5)})
    logger.write(2, {"loss": np.float32(0.25)})
    logger.close()
    (events,) = fileio.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    scalars = [(e.step, v.tag, v.simple_value) for e in map(event_pb2.Event.FromString, tfrecord.read_records(events))
               for v in e.summary.value]
    assert (1, "loss", 0.5) in scalars and (2, "loss", 0.25) in scalars
    assert any(tag == "examples_per_s" for _, tag, _ in scalars)
    assert not os.path.exists("memory:")  # nothing went to a local directory named after the scheme
