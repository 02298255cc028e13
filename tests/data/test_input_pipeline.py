"""The Grain pipeline over real shards: batches, process split, resumption, sampling, corruption."""
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from copgen_jax import draws
from copgen_jax.data import input_pipeline
from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.data import tfrecord
from tests.fixtures.latent_shards import CFG, LOGVAR, REG

def _ids(batch):
    """Record ids of a latent batch, read back from the S2 latents (z / scale ~ id +- 0.5)."""
    m = REG["S2L2A_B02_B03_B04_B08"]
    return np.round(batch["latents"][m.name].mean(axis=(1, 2, 3)) / m.scale_factor).astype(int).tolist()


def _iterator(files, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("seed", 0)
    return input_pipeline.make_latent_iterator(CFG, REG, files, **kw)


def test_latent_batches(latent_dir):
    files = shards.shard_files(latent_dir, "train")
    it = _iterator(files)
    batch = next(it)
    assert set(batch) == {"latents", "present"}
    for m in REG:
        assert batch["latents"][m.name].shape == (4,) + m.latent_shape
        assert batch["latents"][m.name].dtype == np.float32
        assert batch["present"][m.name].shape == (4,) and batch["present"][m.name].dtype == bool
    dem = REG["DEM_DEM"]
    ids = _ids(batch)
    for k, rid in enumerate(ids):
        absent = rid % 3 == 0
        assert batch["present"][dem.name][k] == (not absent)
        if absent:
            assert not batch["latents"][dem.name][k].any()
        np.testing.assert_allclose(batch["latents"]["3d_cartesian_lat_lon"][k, 0, 0], [rid, 0.5, -0.5])
    # One epoch visits every record once (drop_remainder: 20 records, batch 4).
    seen = ids + [i for b in _take(it, 4) for i in _ids(b)]
    assert sorted(seen[:20]) == sorted(c * 100 + i for c in range(4) for i in range(5))


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_processes_get_disjoint_shards(latent_dir):
    files = shards.shard_files(latent_dir, "train")
    parts = [input_pipeline.assign_shards(files, p, 2) for p in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(files)
    seen = [set(i for b in _take(_iterator(files, process_index=p, process_count=2, batch_size=2), 5)
                for i in _ids(b)) for p in range(2)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    with pytest.raises(input_pipeline.DataError, match="4 non-empty shards for 5 processes"):
        input_pipeline.assign_shards(files, 0, 5)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_gives_the_uninterrupted_batches(latent_dir, tmp_path, workers):
    files = shards.shard_files(latent_dir, "train")
    CFG.data.num_workers = workers
    try:
        it = _iterator(files)
        _take(it, 3)
        state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
        # The Orbax way, one file per process through Grain's handler.
        mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
        mgr.save(3, args=ocp.args.Composite(data=input_pipeline.checkpoint_args(it)))
        mgr.wait_until_finished()
        expected = _take(it, 4)  # crosses epochs: 20 records = 5 batches
        from_orbax = _iterator(files)
        mgr.restore(3, args=ocp.args.Composite(data=input_pipeline.checkpoint_args(from_orbax, restore=True)))
        resumed = [from_orbax]
        if not workers:  # the plain-JSON way too (worker start-up is slow: test it once)
            resumed.append(_iterator(files))
            resumed[-1].set_state(state)
        for other in resumed:
            for a, b in zip(expected, _take(other, 4)):
                jax.tree.map(np.testing.assert_array_equal, a, b)
        for x in [it] + resumed:
            x.close()  # stops worker processes now rather than at garbage collection
        mgr.close()
    finally:
        CFG.data.num_workers = 0


def test_z_is_drawn_afresh_with_the_right_statistics(latent_dir):
    files = shards.shard_files(latent_dir, "train")
    m = REG["S2L2A_B02_B03_B04_B08"]
    draws = {}
    for batch in _take(_iterator(files), 15):  # three epochs
        for k, rid in enumerate(_ids(batch)):
            draws.setdefault(rid, []).append(batch["latents"][m.name][k] / m.scale_factor - rid)
    assert all(len(d) == 3 for d in draws.values())
    eps = np.stack([np.stack(d) for d in draws.values()])  # (records, reads, C, H, W) of mean-free z
    assert not np.allclose(eps[:, 0], eps[:, 1])  # every read draws new noise
    assert abs(eps.mean()) < 0.02 and abs(eps.std() - 0.5) < 0.02  # std = exp(logvar / 2)
    corr = np.corrcoef(eps[:, 0].ravel(), eps[:, 1].ravel())[0, 1]
    assert abs(corr) < 0.05


def _corrupt_copy(latent_dir, tmp_path):
    files = shards.shard_files(latent_dir, "train")
    copies = []
    for f in files:
        dst = tmp_path / os.path.basename(f)
        dst.write_bytes(open(f, "rb").read())
        copies.append(str(dst))
    raw = bytearray(open(copies[1], "rb").read())
    frame = len(next(tfrecord.read_records(copies[1]))) + 16
    raw[2 * frame + 40] ^= 0xFF  # record 2 of the second shard
    open(copies[1], "wb").write(bytes(raw))
    return copies


def test_corrupt_shard_raises_with_file_and_record(latent_dir, tmp_path):
    copies = _corrupt_copy(latent_dir, tmp_path)
    with pytest.raises(tfrecord.CorruptRecordError, match=rf"{os.path.basename(copies[1])}: record 2 .*CRC"):
        _take(_iterator(copies), 5)


def test_corrupt_record_skipped_and_counted_when_configured(latent_dir, tmp_path, caplog):
    copies = _corrupt_copy(latent_dir, tmp_path)
    CFG.data.on_corrupt = "skip"
    try:
        with caplog.at_level(logging.WARNING):
            batches = list(_iterator(copies, batch_size=1, num_epochs=1))
    finally:
        CFG.data.on_corrupt = "raise"
    assert len(batches) == 19
    assert "record 2" in caplog.text and "1 corrupt record(s) skipped" in caplog.text


def test_pixel_iterator_and_latent_shard_writing(tmp_path):
    from tests.fixtures.footprints import footprints  # footprint records of two 2 x 2 cells and a test cell
    from copgen_jax.datasets.build import build_pixel_shards

    reg = REG
    pixel_dir = str(tmp_path / "pixels")

    def records(cell):  # the test registry's modalities, at its sizes
        for rec in footprints(cell):
            rec["pixels"] = {k: v for k, v in rec["pixels"].items() if k in reg.names}
            yield rec

    build_pixel_shards(pixel_dir, reg, ["c0", "c1", "c2"], records, name="px", progress=False)
    it = input_pipeline.make_pixel_iterator(CFG, reg, shards.shard_files(pixel_dir, "train"), batch_size=2, seed=1)
    batch = next(it)
    for m in reg:
        assert batch["pixels"][m.name].shape == (2,) + m.pixel_shape
    s2 = batch["pixels"]["S2L2A_B02_B03_B04_B08"]
    assert s2.min() >= -1 and s2.max() <= -0.19  # reflectance 0..4000 normalised

    def encode(pixels, present):  # a stand-in tokenizer: average pooling, fixed variance
        out = {}
        for m in reg.spatial:
            x = pixels[m.name]
            b, c, h, w = x.shape
            pooled = x.reshape(b, c, h // m.downsample, m.downsample, w // m.downsample, m.downsample).mean((3, 5))
            mean = np.repeat(pooled.mean(1, keepdims=True), m.latent_shape[0], axis=1)
            out[m.name] = (mean, np.full_like(mean, LOGVAR))
        return out

    latent_dir = str(tmp_path / "latents")
    manifest = input_pipeline.write_latent_shards(latent_dir, reg, pixel_dir, encode, batch_size=3, progress=False)
    assert manifest["records"] == {"train": 8, "test": 4} and manifest["kind"] == "latents"
    assert manifest["schema"]["DEM_DEM/mean"]["shape"] == list(reg["DEM_DEM"].latent_shape)
    assert manifest["statistics"]["DEM_DEM/mean"]["present"] == 9  # footprint (1, 1) of each cell lacks DEM
    shards.verify(latent_dir)
    pix = {r["key"]: r for s in shards.shard_files(pixel_dir, "train") for r in
           (schema.decode_record(d, reg, schema.PIXELS) for d in tfrecord.read_records(s))}
    for f in shards.shard_files(latent_dir, "train"):
        for d in tfrecord.read_records(f):
            rec = schema.decode_record(d, reg, schema.LATENTS)
            src = pix[rec["key"]]
            assert rec["present"] == src["present"] and rec["transform"] == src["transform"]
            m = reg["S2L2A_B02_B03_B04_B08"]
            x = src["values"][m.name]
            pooled = x.reshape(4, 12, 4, 12, 4).mean((0, 2, 4))
            np.testing.assert_allclose(rec["values"][m.name + "/mean"], np.broadcast_to(pooled, (4, 12, 12)),
                                       rtol=1e-5, atol=1e-6)
    # Rerun: everything kept.
    assert input_pipeline.write_latent_shards(latent_dir, reg, pixel_dir, encode, progress=False) == manifest


def test_global_batch_on_a_mesh():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    local = {"latents": {"a": np.arange(8 * 3, dtype=np.float32).reshape(8, 1, 1, 3)},
             "present": {"a": np.ones(8, bool)}}
    out = input_pipeline.global_batch(local, mesh)
    arr = out["latents"]["a"]
    assert isinstance(arr, jax.Array) and arr.shape == (8, 1, 1, 3)
    assert arr.sharding.spec == jax.sharding.PartitionSpec(("data",))
    assert len(arr.addressable_shards) == 8 and arr.addressable_shards[1].data.shape == (1, 1, 1, 3)
    np.testing.assert_array_equal(np.asarray(arr), local["latents"]["a"])
    assert out["present"]["a"].dtype == bool


def test_sampling_on_device_matches_the_host_statistics(latent_dir):
    files = shards.shard_files(latent_dir, "train")
    it = _iterator(files, sample_on="device")
    moments = next(it)
    assert set(moments) == {"mean", "logvar", "present"}
    keys = draws.example_keys(jax.random.key(0), len(moments["present"][REG.names[0]]))
    batch = jax.jit(lambda b, k: input_pipeline.sample_latents(b, k, REG))(moments, keys)
    m, dem = REG["S2L2A_B02_B03_B04_B08"], REG["DEM_DEM"]
    ids = np.round(moments["mean"][m.name].mean(axis=(1, 2, 3))).astype(int)
    z = np.asarray(batch["latents"][m.name]) / m.scale_factor - ids[:, None, None, None]
    assert abs(z.mean()) < 0.05 and abs(z.std() - 0.5) < 0.05
    absent = ~moments["present"][dem.name]
    assert absent.any() and not np.asarray(batch["latents"][dem.name])[absent].any()
    np.testing.assert_allclose(batch["latents"]["3d_cartesian_lat_lon"][:, 0, 0, 0], ids)
