"""Converting the release's files into a run directory, resumably.

The output looks like a training run at step 0: ``DIR/config.json`` and
``DIR/checkpoints/0/{params,ema_params}`` (the same converted weights, no
optimizer state), so sampling loads it and the training loop fine-tunes it.
Converted tokenizers go to ``DIR/tokenizers/<modality>/`` in the same layout.
"""
from __future__ import annotations

import json
from typing import Mapping

import jax
import numpy as np
from etils import epath

from copgen_jax import checkpoint
from copgen_jax.convert.backbone import convert_backbone, write_run
from copgen_jax.convert.rules import ConversionError, Job
from copgen_jax.convert.tokenizer import tokenizer_jobs
from copgen_jax.convert.torch_io import load_torch_state_dict

MANIFEST = "conversion.json"


def _manifest(out: epath.Path) -> dict:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _fingerprint(source: epath.Path) -> dict:
    stat = source.stat()
    return {"source": str(source), "bytes": stat.length, "mtime": stat.mtime}


def _record(out: epath.Path, label: str, source: epath.Path) -> None:
    entries = dict(_manifest(out), **{label: _fingerprint(source)})
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    tmp.replace(out / MANIFEST)


def convert_files(cfg, backbone: str | None, tokenizers: str | Mapping[str, str] | None, out: str) -> None:
    """Check every file first (all problems at once), then convert and write them one by one.

    ``tokenizers`` is a directory of per-modality autoencoders or a {modality: file} mapping.

    ``out/conversion.json`` records what is done, so an interrupted conversion
    resumes where it stopped when run again with the same files.
    """
    if backbone is None and tokenizers is None:
        raise ConversionError("nothing to convert: give --backbone PATH.pth and/or --tokenizers DIR")
    out = epath.Path(out)
    jobs = []
    if backbone is not None:
        jobs.append(Job("backbone", epath.Path(backbone), out / "checkpoints" / "0",
                        lambda sd: convert_backbone(sd, cfg, source=str(backbone)), lambda p: write_run(out, cfg, p)))
    if tokenizers is not None:
        jobs += tokenizer_jobs(cfg, tokenizers, out)
    done = _manifest(out)
    is_done = {job.label: done.get(job.label) == _fingerprint(job.source) and job.target.exists() for job in jobs}
    taken = [str(job.target) for job in jobs if job.target.exists() and not is_done[job.label]]
    if taken:
        raise FileExistsError(f"{', '.join(taken)} already exist(s) and did not come from these files "
                              f"(see {out / MANIFEST}); delete them or choose an empty --out directory")
    todo = [job for job in jobs if not is_done[job.label]]
    for job in jobs:
        if is_done[job.label]:
            print(f"{job.label}: already converted in {job.target}", flush=True)
    errors = []
    for i, job in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] checking {job.label}: {job.source}", flush=True)
        try:
            job.convert(load_torch_state_dict(job.source))
        except ConversionError as e:
            errors.append(str(e))
    if errors:
        raise ConversionError("\n".join(errors) + "\nnothing was written")
    checkpoint.save_config(out, cfg)
    for i, job in enumerate(todo):
        params = job.convert(load_torch_state_dict(job.source))
        job.write(params)
        _record(out, job.label, job.source)
        print(f"[{i + 1}/{len(todo)}] {job.label}: {job.source} -> {job.target} ({_count(params):,} parameters)",
              flush=True)


def _count(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
