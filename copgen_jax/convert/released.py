"""The released COP-GEN model, from the Hugging Face Hub to a run ``CopGen.load`` samples from.

``convert_released(cfg, out)`` downloads the backbone (``copgen_jax.hub.BACKBONE_REPO``) and
the autoencoders (``VAES_REPO``, one folder per modality, ``hub.VAE_FOLDERS``) at pinned
revisions, checks that every file the config needs is there, converts them, and records
where they came from in ``out/release.json``. Nothing is written until every file is present
and every state dict matches the config, so a missing network, an unknown revision or a
partial download leaves no run behind; an interrupted conversion resumes (``convert_files``).
"""
from __future__ import annotations

import json
import re

from etils import epath

from copgen_jax import hub
from copgen_jax.convert.files import convert_files
from copgen_jax.modalities import registry_from_config

RELEASE_RECORD = "release.json"
_STEP = re.compile(r"(\d+)_nnet_ema\.pth$")


def _backbone_file(snapshot: hub.Snapshot) -> epath.Path:
    """The backbone's EMA weights; the highest training step when the repository holds several."""
    found = sorted(snapshot.glob(hub.BACKBONE_PATTERN),
                   key=lambda p: int(_STEP.search(p.name).group(1)) if _STEP.search(p.name) else -1)
    if not found:
        raise hub.HubError(f"{snapshot.repo}@{snapshot.commit[:12]} holds no {hub.BACKBONE_PATTERN} in "
                           f"{snapshot.path}: the download is incomplete; run again online to finish it")
    return found[-1]


def _tokenizer_files(cfg, snapshot: hub.Snapshot) -> dict[str, epath.Path]:
    """{modality: its autoencoder's file} for every image modality of the config."""
    folder_of = {name: folder for folder, name in hub.VAE_FOLDERS.items()}
    spatial = [m.name for m in registry_from_config(cfg).spatial]
    unknown = [n for n in spatial if n not in folder_of]
    if unknown:
        raise hub.HubError(f"the release has no autoencoder for {', '.join(unknown)}: the config's modalities "
                           f"must be among {', '.join(sorted(folder_of))}")
    return {n: snapshot.need(f"{folder_of[n]}/{hub.VAE_FILE}") for n in spatial}


def fetch_release(cfg, revision: str = "main", vaes_revision: str = "main", cache_dir: str | None = None):
    """(backbone file, {modality: autoencoder file}, {what: repo/revision/commit/file}) from the Hub cache."""
    spatial = {m.name for m in registry_from_config(cfg).spatial}
    folders = [f for f, name in hub.VAE_FOLDERS.items() if name in spatial]
    backbone = hub.snapshot(hub.BACKBONE_REPO, revision, allow_patterns=[hub.BACKBONE_PATTERN], cache_dir=cache_dir)
    vaes = hub.snapshot(hub.VAES_REPO, vaes_revision, allow_patterns=[f"{f}/{hub.VAE_FILE}" for f in folders],
                        cache_dir=cache_dir)
    backbone_file, tokenizer_files = _backbone_file(backbone), _tokenizer_files(cfg, vaes)
    record = {"backbone": dict(backbone.record(), file=backbone_file.name),
              "autoencoders": dict(vaes.record(), files={n: f"{p.parent.name}/{p.name}"
                                                         for n, p in tokenizer_files.items()})}
    return backbone_file, tokenizer_files, record


def convert_released(cfg, out, revision: str = "main", vaes_revision: str = "main",
                     cache_dir: str | None = None) -> epath.Path:
    """Download (or find cached) and convert the released model into the run ``out``."""
    backbone_file, tokenizer_files, record = fetch_release(cfg, revision, vaes_revision, cache_dir)
    out = epath.Path(out)
    recorded = out / RELEASE_RECORD
    if recorded.exists() and json.loads(recorded.read_text()) != record:
        raise FileExistsError(f"{out} holds a conversion of other release files ({recorded}); "
                              "choose an empty --out directory")
    print(f"release: {record['backbone']['repo']}@{record['backbone']['commit'][:12]} "
          f"({backbone_file.name}), {record['autoencoders']['repo']}@{record['autoencoders']['commit'][:12]} "
          f"({len(tokenizer_files)} autoencoders)", flush=True)
    convert_files(cfg, str(backbone_file), tokenizer_files, str(out))
    recorded.write_text(json.dumps(record, indent=1, sort_keys=True))
    return out
