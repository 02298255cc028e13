"""COP-GEN base on a TPU v4-32 slice (16 chips, 4 hosts): global batch 4096, bf16, FSDP.

Launch with launch/tpu_pod.py (see launch/README.md). Each of the 4 hosts feeds
1024 examples per step; parameters, gradients and optimizer state are sharded
16 ways over ``fsdp`` (about 0.29 GB of fp32 weights per chip), activations
over the batch. Each chip's 256 examples run as 8 micro-batches of 32 through
scanned, fully rematerialised blocks and the splash-attention kernel; compiled for
16 devices its step needs about 10 GiB per chip of the v4's 32 (README, "Memory").
"""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.model.dtype = "bfloat16"  # compute; master weights stay fp32
    c.model.remat_policy = "full"
    c.model.scan_blocks = True
    c.train.global_batch = 4096
    c.train.microbatches = 8
    c.mesh.data, c.mesh.fsdp = 1, 16
    c.data.source = "shards"
    c.data.shards = "gs://YOUR_BUCKET/copgen/latents/train-*.tfrecord"
    c.data.num_workers = 8
    c.data.sample_on = "device"
    return c
