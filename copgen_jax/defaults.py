"""The default config every ``configs/*.py`` starts from (SPEC §3-§5 values).

Every knob the code reads lives here once, with its comment; config files only state
what differs, and a saved run's ``config.json`` is read over these (``with_defaults``).
"""
from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # What the entry point runs: "backbone", "tokenizer", or "pipeline" (the
    # end-to-end embedded default: data -> tokenizers -> latents -> backbone -> samples);
    # "baseline" marks a deterministic baseline's run (copgen_jax.trainers.baseline).
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
    # Attention core (models/attention.py): "auto" (splash on TPU, cuDNN on GPU in bf16, elsewhere
    # whole logits while small, chunked when large), "xla", "chunked", "dot_product" or "splash".
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
    # After the warm-up: "warmup_constant" holds lr (SPEC §5); "polynomial" decays it to end_lr
    # as (1 - t / decay_steps) ** power over decay_steps (0 = over what is left of train.steps).
    c.optim.schedule = "warmup_constant"
    c.optim.end_lr = 0.0
    c.optim.power = 1.0
    c.optim.decay_steps = 0
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
    # model quality can be claimed on it); "shards": latent-moment TFRecords (pixel
    # shards for a tokenizer); "random": seeded random pixels (tokenizer smoke runs).
    c.data.source = "synthetic_latents"
    c.data.shards = ""  # glob of latent-moment shards
    c.data.num_examples = 256  # examples "synthetic_latents" and "random" cycle through
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

    # --- modality tokenizer (task "tokenizer": one KL autoencoder, SPEC §3) ------
    c.tokenizer = ml_collections.ConfigDict()
    t = c.tokenizer
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

    # --- deterministic baseline (copgen_jax.trainers.baseline) -----------------
    c.baseline = ml_collections.ConfigDict()
    c.baseline.targets = ()  # modalities always generated; empty = a random subset per example
    c.baseline.target_rate = 0.5  # probability that a modality is a target (random subsets)
    c.baseline.condition_dropout = 0.3  # probability that a non-target modality is left out

    # --- end-to-end pipeline (task "pipeline", copgen_jax.pipeline) -------------
    c.pipeline = ml_collections.ConfigDict()
    p = c.pipeline
    # The synthetic world (copgen_jax.datasets.build "synthetic"): Major TOM cells, dates per
    # cell, footprints per cell side, and the world's seed.
    p.cells, p.observations, p.footprints_per_side, p.world_seed = 64, 1, 1, 0
    p.cells_per_shard = 1  # cells per pixel shard
    p.test_fraction = 0.2  # held-out share of the cells (datasets.build.SYNTHETIC_TEST_FRACTION)
    p.test_observations = 0  # dates per held-out cell; 0 = pipeline.observations
    p.data_workers = 1  # processes writing the world and its shards
    p.encode_batch = 32  # pixel records per batch when encoding latents
    p.tokenizer = ml_collections.ConfigDict()
    # Each spatial modality's tokenizer run: these sections over cfg.tokenizer, cfg.optim and cfg.train.
    p.tokenizer.model = ml_collections.ConfigDict()
    p.tokenizer.optim = ml_collections.ConfigDict()
    p.tokenizer.train = ml_collections.ConfigDict()
    p.tokenizer.shuffle_buffer = 64  # the tokenizer runs' data.shuffle_buffer
    # {modality: {"model" | "optim" | "train": {...}}} over the sections above, for one modality
    p.tokenizer.per_modality = ml_collections.ConfigDict()
    # The report: any-to-any tasks ("given+given->generated+generated") sampled on held-out footprints.
    p.tasks = ()
    p.footprints = 4  # held-out footprints per task
    p.n_samples = 8  # samples per footprint
    p.sampler, p.sample_steps = "dpm++", 20
    p.guidance = 1.0  # classifier-free guidance weight; 1 = none
    p.seed = 0  # the report's sampling seed
    return c


def _plain(cfg) -> dict:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        v = _plain(v) if isinstance(v, (dict, ml_collections.ConfigDict)) else v
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def with_defaults(saved) -> ml_collections.ConfigDict:
    """``saved`` (a run's config.json as a dict, or a ConfigDict) read over the current defaults.

    Runs saved before a knob existed load with its default; what ``saved`` holds wins.
    """
    return ml_collections.ConfigDict(_merged(default_config().to_dict(), _plain(saved)))


# Sections whose keys are not fixed by the defaults: maps keyed by modality name (the value's
# reference for each entry), and sections that override another section of the defaults.
_MODALITY_MAPS = {
    "modalities.per_modality": lambda d: {"downsample": 0, "patch": 0, "latent_channels": 0},
    "pipeline.tokenizer.per_modality": lambda d: {"model": d["tokenizer"], "optim": d["optim"], "train": d["train"]},
}
_OVERRIDES = {"pipeline.tokenizer.model": "tokenizer", "pipeline.tokenizer.optim": "optim",
              "pipeline.tokenizer.train": "train"}


def unknown_keys(cfg) -> list[str]:
    """Dotted paths of ``cfg`` that no default declares (a typo'd or stale knob)."""
    ref = default_config().to_dict()

    def walk(value: dict, against: dict, path: str) -> list[str]:
        out = []
        for k, v in value.items():
            at = f"{path}.{k}" if path else k
            if at in _MODALITY_MAPS:
                entry = _MODALITY_MAPS[at](ref)
                out += [u for name, e in v.items() for u in walk(_plain(e), entry, f"{at}.{name}")]
                continue
            r = ref[_OVERRIDES[at]] if at in _OVERRIDES else against.get(k, _MISSING)
            if r is _MISSING:
                out.append(at)
            elif isinstance(v, dict) and isinstance(r, dict):
                out += walk(v, r, at)
        return out

    return walk(_plain(cfg), ref, "")


_MISSING = object()


def check(cfg) -> None:
    """Raise ValueError naming every key of ``cfg`` unknown to the defaults."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(f"config keys unknown to copgen_jax.defaults: {', '.join(unknown)} "
                         "(a typo, or a knob to declare in default_config())")
