"""The deterministic baseline as a predictor: ``CopGen``'s interface over the baseline run.

``Baseline.load(workdir).generate(...)`` encodes conditions and decodes outputs with the
run's tokenizers; every one of the N "samples" is the same prediction (the training is
``copgen_jax.trainers.baseline``).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from copgen_jax import parallel
from copgen_jax import storage
from copgen_jax.inference.copgen import CopGen
from copgen_jax.trainers.baseline import baseline_dir, is_baseline_run


class Baseline(CopGen):
    """The baseline behind ``CopGen.generate``: N identical samples of the one prediction."""

    @classmethod
    def load(cls, path, step: int | None = None, *, mesh=None, tokenizers_dir=None, **kwargs) -> "Baseline":
        """Load ``<workdir>/baseline`` (given ``<workdir>``) or a baseline run directory itself;
        tokenizers from the diffusion run's ``tokenizers/``."""
        path = os.fspath(path)
        if not is_baseline_run(path):
            path = baseline_dir(path)
        if not (storage.path(path) / "config.json").exists():
            raise FileNotFoundError(f"{path}: no baseline run; train one with `python -m copgen_jax.evaluate "
                                    f"--workdir={storage.path(path).parent} --model=baseline --train-baseline-steps=N`")
        tokenizers_dir = tokenizers_dir or os.fspath(storage.absolute(path).parent / "tokenizers")
        return super().load(path, step, mesh=mesh, tokenizers_dir=tokenizers_dir, **kwargs)

    def _sample(self, cond, generate, batch, n, key, **opts):
        """One forward pass per input; repeated N times (same layout as ``CopGen._sample``)."""
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        padded = -(-batch // shards) * shards
        take = np.minimum(np.arange(padded), batch - 1)
        placed = {k: jax.device_put(v[take], self._row_sharding(v.ndim)) for k, v in cond.items()}
        fn = self._predictor(tuple(generate), tuple(sorted(cond)), padded)
        self._ticks, self._steps_now = 0, 1
        with parallel.use_mesh(self.mesh, self.rules):
            out = fn(self._params, placed)
        self._report("sample", 1, 1)
        return {k: np.repeat(np.asarray(v)[:batch, None], n, 1) for k, v in {**out, **cond}.items()}

    def _predictor(self, generate, given, rows):
        cache_key = ("baseline", generate, given, rows)
        if cache_key in self._samplers:
            return self._samplers[cache_key]
        shapes = {m.name: m.latent_shape for m in self.registry}
        graphdef, n_max = self._graphdef, self.schedule.num_steps

        def run(params, cond):
            model = nnx.merge(graphdef, params)
            latents = {**cond, **{n: jnp.zeros((rows, *shapes[n]), jnp.float32) for n in generate}}
            timesteps = {**{n: jnp.zeros((rows,), jnp.int32) for n in given},
                         **{n: jnp.full((rows,), n_max, jnp.int32) for n in generate}}
            pred = model(latents, timesteps)  # modalities neither given nor generated are left out
            return {n: pred[n] for n in generate}

        row = {n: self._row_sharding(1 + len(shapes[n])) for n in shapes}
        fn = jax.jit(run, in_shardings=(None, {n: row[n] for n in given}),
                     out_shardings={n: row[n] for n in generate})
        self._samplers[cache_key] = fn
        return fn
