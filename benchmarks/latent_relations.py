"""How much of one modality's latent can be read from others'? The ceiling for conditioning.

For each relation "source[+source...]->target", a predictor maps each target cell's features to
the target latent there: the 3 x 3 neighbourhood of every spatial source on the target's grid
(and, for a coarser source, where the cell lies inside the source's cell), and the scalar sources
(location, date) whole, as every token sees them. Trained on the train split's latent shards
(posterior means, scaled as the backbone sees them), scored on the held-out split: R² = 1 - MSE /
variance about the train mean. Two predictors: linear (least squares) and a two-layer MLP.

A backbone that follows its conditions predicts the target at n = N (``conditioning.py``) about
as well as the best of these; where they reach ~0 the latents carry no relation to learn.

  python benchmarks/latent_relations.py --workdir=runs/demo \\
      --pairs="LULC_LULC->S2L2A_B02_B03_B04_B08,3d_cartesian_lat_lon+DEM_DEM->LULC_LULC"
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402

from copgen_jax import checkpoint, flagparse  # noqa: E402
from copgen_jax.data import input_pipeline
from copgen_jax.data import tfrecord
from copgen_jax.trainers.backbone import latent_shards  # noqa: E402
from copgen_jax.modalities import registry_from_config  # noqa: E402


PREDICTORS = ("linear", "mlp")


def load_pairs(latents_dir: str, registry, sources, target: str, split: str):
    """([per source], target) scaled posterior means of the records holding every one of them:
    (N, C, H, W) for spatial modalities, (N, D) for scalar ones (location, date)."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    files, reg = latent_shards(latents_dir, registry, split)
    rows = []
    for f in files:
        for i, item in enumerate(tfrecord.read_records(f)):
            mean = input_pipeline.parse_latent_moments((f, i, item), reg)["mean"]
            if all(n in mean for n in (*sources, target)):
                rows.append([mean[n] * reg[n].scale_factor for n in (*sources, target)])
    if not rows:
        raise ValueError(f"no {split} record in {latents_dir} has all of {' + '.join(sources)} and {target}")
    stacked = [np.stack(col).astype(np.float32) for col in zip(*rows)]
    flat = lambda n, x: x.reshape(len(x), -1) if reg[n].is_scalar else x  # noqa: E731
    return [flat(n, x) for n, x in zip(sources, stacked)], flat(target, stacked[-1])


def source_cells(size: int, target: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Along one axis, for each of ``target`` cells: the cell of a ``size``-cell source under its
    centre, which of the distinct places inside a source cell that centre takes, and how many
    such places there are (1 where the source is as fine as the target or finer)."""
    centre = (np.arange(target) + 0.5) * size / target
    index = np.floor(centre).astype(np.int64)
    places, where = np.unique(np.round(centre - index, 6), return_inverse=True)
    return index, where, len(places)


def neighbourhoods(src: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) -> (N * H * W, 9 C + places): the source read at each target cell's centre,
    its 3 x 3 neighbourhood on the target grid, and, for a coarser source, a one-hot of where
    the target cell lies inside its source cell, as the backbone knows from its token positions.
    Any two grids work (a 4 x 4 source under a 12 x 12 target, or 8 x 8 under 12 x 12)."""
    n, c, h, w = src.shape
    gh, gw = grid
    (iy, wy, ny), (ix, wx, nx) = source_cells(h, gh), source_cells(w, gw)
    up = src[:, :, iy][:, :, :, ix]
    pad = np.pad(up, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    feats = np.concatenate([pad[:, :, i:i + gh, j:j + gw] for i in range(3) for j in range(3)], 1)
    feats = feats.transpose(0, 2, 3, 1)
    if ny * nx > 1:
        within = wy[:, None] * nx + wx[None, :]
        offset = np.broadcast_to(np.eye(ny * nx, dtype=feats.dtype)[within], (n, gh, gw, ny * nx))
        feats = np.concatenate([feats, offset], -1)
    return feats.reshape(n * gh * gw, -1)


def local_features(sources, grid: tuple[int, int]) -> np.ndarray:
    """Per target cell: every spatial source's neighbourhood, every scalar source (N, D) whole."""
    n = len(sources[0])
    feats = [neighbourhoods(x, grid) if x.ndim == 4 else np.repeat(x, grid[0] * grid[1], 0) for x in sources]
    assert all(len(f) == n * grid[0] * grid[1] for f in feats)
    return np.concatenate(feats, 1)


def cells(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N * H * W, C)."""
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def r2(pred: np.ndarray, truth: np.ndarray, train_mean: np.ndarray) -> float:
    return float(1 - np.mean((pred - truth) ** 2) / np.mean((truth - train_mean) ** 2))


def fit_linear(x, y):
    design = lambda a: np.concatenate([a, np.ones((len(a), 1), a.dtype)], 1)  # noqa: E731
    w = np.linalg.lstsq(design(x), y, rcond=None)[0]
    return lambda a: design(a) @ w


def fit_mlp(x, y, *, hidden=128, steps=2000, batch=4096, seed=0):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    keys = jax.random.split(jax.random.key(seed), 3)
    params = {"w1": jax.random.normal(keys[0], (x.shape[1], hidden)) / np.sqrt(x.shape[1]), "b1": jnp.zeros(hidden),
              "w2": jax.random.normal(keys[1], (hidden, hidden)) / np.sqrt(hidden), "b2": jnp.zeros(hidden),
              "w3": jnp.zeros((hidden, y.shape[1])), "b3": jnp.asarray(y.mean(0))}

    def apply(p, a):
        h = jax.nn.gelu((a - mu) / sd @ p["w1"] + p["b1"])
        h = jax.nn.gelu(h @ p["w2"] + p["b2"])
        return h @ p["w3"] + p["b3"]

    tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    state = tx.init(params)

    @jax.jit
    def step(p, s, idx):
        loss, g = jax.value_and_grad(lambda q: jnp.mean((apply(q, x[idx]) - y[idx]) ** 2))(p)
        updates, s = tx.update(g, s)
        return optax.apply_updates(p, updates), s, loss

    x, y = jnp.asarray(x), jnp.asarray(y)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        params, state, _ = step(params, state, rng.integers(0, len(x), min(batch, len(x))))
    return lambda a: np.asarray(jax.jit(apply)(params, jnp.asarray(a)))


def relation(train, test, *, mlp_steps=2000) -> dict:
    """Held-out R² of the two predictors; train/test are (source or [sources], target) latents."""
    as_list = lambda x: list(x) if isinstance(x, (list, tuple)) else [x]  # noqa: E731
    (src_tr, y_tr), (src_te, y_te) = (as_list(train[0]), train[1]), (as_list(test[0]), test[1])
    grid = y_tr.shape[2:]
    x_tr, x_te = local_features(src_tr, grid), local_features(src_te, grid)
    c_tr, c_te = cells(y_tr), cells(y_te)
    mean = c_tr.mean(0)
    return {"linear": r2(fit_linear(x_tr, c_tr)(x_te), c_te, mean),
            "mlp": r2(fit_mlp(x_tr, c_tr, steps=mlp_steps)(x_te), c_te, mean),
            "train_records": len(y_tr), "test_records": len(y_te)}


FLAGS = flagparse.new()
flags.DEFINE_string("workdir", None, "a run whose data/latents holds latent shards", flag_values=FLAGS)
flags.DEFINE_string("pairs", "LULC_LULC->S2L2A_B02_B03_B04_B08,S2L2A_B02_B03_B04_B08->LULC_LULC,"
                             "DEM_DEM->LULC_LULC,3d_cartesian_lat_lon+DEM_DEM->LULC_LULC",
                    "comma-separated source[+source...]->target", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "held-out split", flag_values=FLAGS)
flags.DEFINE_integer("mlp-steps", 2000, "training steps of the MLP probe", flag_values=FLAGS)
flags.DEFINE_string("out", None, "JSON path (default WORKDIR/eval/latent_relations.json)", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir"], flag_values=FLAGS)


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/latent_relations.py", description=__doc__.split("\n")[0])
    registry = registry_from_config(checkpoint.load_config(args.workdir))
    latents = os.path.join(args.workdir, "data", "latents")
    rows = []
    print(f"{'source -> target':<64}" + "".join(f"{k:>8}" for k in PREDICTORS))
    for pair in args.pairs.split(","):
        source, _, target = pair.partition("->")
        sources = source.split("+")
        for name in (*sources, target):
            registry[name]  # unknown names raise, listing the known ones
        train = load_pairs(latents, registry, sources, target, "train")
        test = load_pairs(latents, registry, sources, target, args.split)
        row = {"source": source, "target": target, **relation(train, test, mlp_steps=args.mlp_steps)}
        rows.append(row)
        print(f"{source + ' -> ' + target:<64}" + "".join(f"{row[k]:>8.3f}" for k in PREDICTORS), flush=True)
    out = args.out or os.path.join(args.workdir, "eval", "latent_relations.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"workdir": args.workdir, "split": args.split, "rows": rows}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
