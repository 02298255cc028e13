"""The default config every ``configs/*.py`` starts from (SPEC §4-§5 values).

Config files only state what differs, so every knob is documented here once.
"""
import ml_collections


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # What the entry point runs: "backbone", "tokenizer", or "pipeline" (the
    # end-to-end embedded default: data -> tokenizers -> latents -> backbone -> samples).
    c.task = "backbone"

    # --- modalities (see copgen_jax.modalities.build_registry) ---------------
    c.modalities = ml_collections.ConfigDict()
    c.modalities.names = ()  # empty = all 12 official modalities
    c.modalities.pixel_scale = 1  # divide native sizes (192 -> 192 / pixel_scale)
    c.modalities.downsample = 8  # tokenizer reduction: 192 px -> 24 latent
    c.modalities.patch = 0  # 0 = official (2 for images)
    c.modalities.latent_channels = 0  # 0 = official (8)
    c.modalities.signed_dem = False  # keep elevations <= 0 (not in released weights)
    # {name: {downsample, patch, latent_channels}} for single image modalities, over the above
    c.modalities.per_modality = ml_collections.ConfigDict()

    # --- backbone (U-ViT, post-LN, one time token per modality) --------------
    c.model = ml_collections.ConfigDict()
    c.model.hidden = 1024
    c.model.depth = 20
    c.model.heads = 16
    c.model.mlp_ratio = 4
    c.model.dtype = "float32"  # compute dtype; "bfloat16" keeps fp32 master weights
    c.model.attention_dtype = "float32"  # softmax in fp32, as the release does
    c.model.remat = False  # rematerialise each block (gradient checkpointing)
    c.model.pos_init = "random"  # positional table's start; "ground": + a 2-D code shared by all modalities
    # > 0: attention logits minus a learned per-head slope (starting at this value, halving per
    # head) times the ground distance between tokens, across modalities (2-D ALiBi). 0: the release.
    c.model.ground_bias = 0.0

    # --- diffusion ------------------------------------------------------------
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_steps = 1000
    c.diffusion.beta_start = 0.00085
    c.diffusion.beta_end = 0.012
    c.diffusion.prediction = "eps"  # "eps" (the release's) or "v" (well scaled at every timestep)
    # Probability of marking each (sample, modality) absent during training;
    # absent modalities are masked out of attention and carry no loss.
    c.diffusion.modality_dropout = 0.0
    # Probability of feeding each present (sample, modality) clean at timestep 0 with
    # no loss: a condition, exactly as the samplers feed conditions. 0 = the release.
    c.diffusion.condition_rate = 0.0

    # --- optimisation ---------------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.weight_decay = 0.03
    c.optim.b1 = 0.99
    c.optim.b2 = 0.99
    c.optim.warmup_steps = 5000
    c.optim.grad_clip = 0.0  # 0 = none (the release clips nothing)
    c.optim.ema_rate = 0.9999
    c.optim.ema_warmup = True  # min(rate, (1 + t) / (10 + t)); False: the release's constant rate
    c.optim.grad_accum = 1  # micro-batches per step

    # --- training loop --------------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.global_batch = 512
    c.train.steps = 500_000
    c.train.log_every = 100
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 3
    c.train.async_checkpoint = True

    # --- input ----------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    # "synthetic_latents": seeded in-memory latents of the right shapes (no
    # model quality can be claimed on it); "shards": latent-moment TFRecords.
    c.data.source = "synthetic_latents"
    c.data.shards = ""  # glob of latent-moment shards
    c.data.num_workers = 0  # Grain worker processes (0 = in the main process)
    c.data.shuffle_buffer = 1024  # window shuffle, in records
    c.data.cycle_length = 4  # shards interleaved at once
    c.data.prefetch = 2
    c.data.on_corrupt = "raise"  # or "skip": skip and count corrupt TFRecord records
    # Where z = mean + sigma * eps is drawn: "host" (Grain workers) or "device" (inside the
    # jitted step; halves the host's work per record, for hosts that feed fast accelerators).
    c.data.sample_on = "host"

    # --- device mesh and logical-axis sharding rules ---------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # logical axis -> mesh axis (or None = replicated). Batch over data+fsdp,
    # parameters' embed axis over fsdp, heads/mlp over tensor.
    c.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("tokens", None),
        ("patch", None),
    )
    return c
