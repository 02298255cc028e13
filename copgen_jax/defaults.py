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
    # What each block keeps for the backward: "none" (everything), "full" (its inputs only:
    # the block is recomputed), "dots" / "dots_no_batch" (matmul outputs). See models/backbone.py.
    c.model.remat_policy = "none"
    c.model.scan_blocks = False  # lax.scan over each half's stacked blocks: HLO and compile time flat in depth
    # Attention core (models/attention.py): "auto" (splash on TPU, cuDNN on GPU in bf16, chunked
    # elsewhere), "xla" (whole L x L logits), "chunked", "dot_product" or "splash".
    c.model.attention = "auto"
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

    # --- training loop --------------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.global_batch = 512
    c.train.steps = 500_000
    # Micro-batches each step's global batch is split into (gradients summed in the
    # parameters' sharding): the per-device batch that fits is global / (devices x this).
    c.train.microbatches = 1
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


def tokenizer_defaults() -> ml_collections.ConfigDict:
    """Every ``cfg.tokenizer`` knob with its official value (SPEC §3); configs change what differs."""
    t = ml_collections.ConfigDict()
    t.modality = ""  # which registry modality this run trains (required)
    t.ch = 128
    t.ch_mult = (1, 2, 4, 4)  # len - 1 halvings: must give the registry's downsample
    t.num_res_blocks = 2
    t.z_channels = 0  # 0 = the registry's latent_channels
    # GroupNorm groups (the release's 32 gives 4 channels per group at ch=128). Narrow demo
    # models need fewer: one channel per group erases per-image brightness (see GroupNorm).
    t.norm_groups = 32
    t.dtype = "float32"  # compute dtype of the convolutions; parameters stay fp32
    t.l1_weight = 1.0
    t.l2_weight = 1.0
    t.categorical_loss = "cross_entropy"  # or "regression" (L1 + L2 on the one-hot, as the release)
    # The release declares a learnable output log-variance s but leaves it out of both
    # optimizers, so s stays 0; True makes it a trained parameter.
    t.learn_logvar = False
    t.kl_weight = 1e-6
    t.hflip = True  # random horizontal flips of training images (the release's augmentation)
    t.perceptual_weight = 0.0  # LPIPS needs pretrained VGG weights: unavailable offline, must stay 0
    t.disc_layers = 3  # 0 = no discriminator
    t.disc_ndf = 64
    t.disc_start = 50001  # the adversarial terms count from this step on
    t.disc_weight = 0.5
    t.preview_count = 4  # examples shown in TensorBoard previews
    t.scale_factor_batches = 64  # batches of training latents behind the scale factor
    # Also record each latent channel's mean and encode latents centred (copgen_jax.latents.store): the
    # release's latents are scaled only, which its converted backbone expects.
    t.center_latents = False
    return t


def baseline_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        targets=(),  # modalities always generated; empty = a random subset per example
        target_rate=0.5,  # probability that a modality is a target (random subsets)
        condition_dropout=0.3,  # probability that a non-target modality is left out
    ))
