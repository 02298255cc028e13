"""COP-GEN base on one node of 8 H100 80 GB GPUs: global batch 512, bf16, data parallel.

Launch with launch/slurm_gpu.sbatch or launch/slurm.py (see launch/README.md); more
nodes add to ``data`` (-1: every GPU), so the per-GPU batch halves on two nodes. At
287M parameters the fp32 weights, EMA and Adam moments (4.6 GB) fit every GPU whole,
so gradients are all-reduced once per step and nothing is gathered in the forward
(the default mesh: every device on ``data``).
Attention runs cuDNN's fused kernel (bf16); 64 examples per GPU run in one pass
through scanned, rematerialised blocks (README, "Memory").
"""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.model.dtype = "bfloat16"  # compute; master weights stay fp32
    c.model.remat_policy = "full"
    c.model.scan_blocks = True
    c.data.source = "shards"
    c.data.shards = "/shared/copgen/latents"
    c.data.num_workers = 8
    c.data.sample_on = "device"
    return c
