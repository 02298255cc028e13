"""The released COP-GEN files on the Hugging Face Hub: where they are, and fetching them.

Every repository and file name the project downloads is written here, once. They are the
release's own (its README clones these repositories; its configs and benchmark scripts name
the files inside):

* ``mespinosami/copgen-base`` (model): the base backbone's EMA weights, ``<step>_nnet_ema.pth``
  (``500000_nnet_ema.pth``; the highest step is taken when several are present).
* ``mespinosami/copgen-vaes`` (model): one folder per autoencoder, ``<folder>/model-50-ema.pth``;
  ``VAE_FOLDERS`` maps each folder to the modality it encodes.
* ``Major-TOM/COP-GEN-Benchmark`` (dataset): the stochastic benchmark, ``real/data/*.parquet``
  (with ``copgen/`` and ``terramind/`` samples beside it) and ``metadata/benchmark_grid.json``.
* ``mespinosami/copgen-test-dataset`` (dataset): the release's test cells as Major TOM
  ``Core-*`` folders, whose DEM and land cover condition the benchmark's generations.
* ``mespinosami/copgen-edinburgh-subset`` (dataset): an example region, ``Core-*`` folders zipped.

Downloads go through ``huggingface_hub`` into its cache (``HF_HOME`` / ``--hub-cache``):
resumable, shared between runs, and usable offline (``HF_HUB_OFFLINE=1``) once present.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import re
import zipfile
from typing import Sequence

from etils import epath

BACKBONE_REPO = "mespinosami/copgen-base"
BACKBONE_PATTERN = "*nnet_ema.pth"
VAES_REPO = "mespinosami/copgen-vaes"
VAE_FILE = "model-50-ema.pth"
VAE_FOLDERS = {  # the release's folder name -> our modality name
    "DEM_64x64_DEM_latent_8": "DEM_DEM",
    "LULC_192x192_LULC_latent_8": "LULC_LULC",
    "S1RTC_192x192_VV_VH_latent_8": "S1RTC_vh_vv",
    "S2L1C_32x32_B1_9_10_latent_8": "S2L1C_B01_B09_B10",
    "S2L1C_192x192_B4_3_2_8_latent_8": "S2L1C_B02_B03_B04_B08",
    "S2L1C_96x96_B5_6_7_8A_11_12_latent_8": "S2L1C_B05_B06_B07_B11_B12_B8A",
    "S2L1C_192x192_cloud_mask_latent_8": "S2L1C_cloud_mask",
    "S2L2A_32x32_B1_9_latent_8": "S2L2A_B01_B09",
    "S2L2A_192x192_B4_3_2_8_latent_8": "S2L2A_B02_B03_B04_B08",
    "S2L2A_96x96_B5_6_7_8A_11_12_latent_8": "S2L2A_B05_B06_B07_B11_B12_B8A",
}
BENCHMARK_REPO = "Major-TOM/COP-GEN-Benchmark"
BENCHMARK_GRID = "metadata/benchmark_grid.json"
BENCHMARK_REAL = "real/data/*.parquet"
CONDITIONS_REPO = "mespinosami/copgen-test-dataset"
EDINBURGH_REPO = "mespinosami/copgen-edinburgh-subset"

_COMMIT = re.compile(r"[0-9a-f]{40}")


class HubError(RuntimeError):
    """A repository, revision or file that could not be had, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A repository's files at one commit, on local disk."""

    repo: str
    revision: str  # as asked ("main", a tag, a commit)
    commit: str  # the commit it resolved to
    path: epath.Path

    def record(self) -> dict:
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit}

    def need(self, relative: str) -> epath.Path:
        """The file at ``relative``, or a HubError saying the download is incomplete."""
        path = self.path / relative
        if not path.exists():
            raise HubError(f"{self.repo}@{self.commit[:12]} has no {relative} in {self.path}: the download is "
                           "incomplete or the repository changed its layout; run again online to finish it "
                           "(downloads resume), or pin --revision to a commit that has it")
        return path

    def glob(self, pattern: str) -> list[epath.Path]:
        return sorted(self.path.glob(pattern))


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise HubError("downloading from the Hub needs huggingface_hub: pip install 'copgen_jax[hub]'") from e
    return huggingface_hub


@contextlib.contextmanager
def _explained(where: str, cache_dir):
    """huggingface_hub's errors -> a HubError that says what is missing and what to do."""
    from huggingface_hub import errors
    try:
        yield
    except errors.RevisionNotFoundError as e:
        raise HubError(f"{where}: no such revision on the Hub (use a branch, tag or full commit hash)") from e
    except errors.RepositoryNotFoundError as e:
        raise HubError(f"{where}: no such repository on the Hub (or it is private: log in with `hf auth login`)") from e
    except errors.LocalEntryNotFoundError as e:
        raise HubError(f"{where}: not in the cache ({cache_dir or 'the default Hugging Face cache'}) and the Hub "
                       "cannot be reached (no network, or HF_HUB_OFFLINE=1); connect and run again, or point "
                       "--hub-cache at a cache that holds it") from e
    except errors.RemoteEntryNotFoundError as e:
        raise HubError(f"{where}: no such file in the repository") from e
    except errors.HfHubHTTPError as e:
        raise HubError(f"{where}: the Hub answered with an error: {e}") from e


def _commit_of(path: epath.Path, revision: str) -> str:
    return path.name if _COMMIT.fullmatch(path.name) else revision


def snapshot(repo: str, revision: str = "main", *, repo_type: str = "model",
             allow_patterns: Sequence[str] | None = None, cache_dir: str | None = None) -> Snapshot:
    """Download (or find in the cache) ``repo`` at ``revision``, only the files ``allow_patterns`` match.

    Offline (no network, or ``HF_HUB_OFFLINE=1``) a cached snapshot of that revision is used;
    without one, and for an unknown repository or revision, a HubError says what is missing.
    """
    hf = _hub()
    with _explained(f"{repo_type} repository {repo} at revision {revision!r}", cache_dir):
        path = epath.Path(hf.snapshot_download(repo, revision=revision, repo_type=repo_type, cache_dir=cache_dir,
                                               allow_patterns=list(allow_patterns) if allow_patterns else None))
    return Snapshot(repo, revision, _commit_of(path, revision), path)


@dataclasses.dataclass(frozen=True)
class Listing:
    """A repository's file names at one commit; each file downloaded only when asked for.

    For datasets too large to take whole (the benchmark's parquet shards): a subset of
    cells fetches only the shards it reads.
    """

    repo: str
    revision: str
    commit: str
    repo_type: str
    files: tuple[str, ...]
    cache_dir: str | None = None

    def record(self) -> dict:
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit}

    def matching(self, pattern: str) -> list[str]:
        return sorted(f for f in self.files if fnmatch.fnmatch(f, pattern))

    def fetch(self, relative: str) -> epath.Path:
        """The file at ``relative`` on local disk (downloaded once, resumable, then cached)."""
        with _explained(f"{self.repo_type} repository {self.repo}@{self.commit[:12]}, file {relative}",
                        self.cache_dir):
            return epath.Path(_hub().hf_hub_download(self.repo, relative, revision=self.commit,
                                                     repo_type=self.repo_type, cache_dir=self.cache_dir))


def listing(repo: str, revision: str = "main", *, repo_type: str = "model",
            cache_dir: str | None = None) -> Listing:
    """The files of ``repo`` at ``revision`` without downloading them.

    Online: the Hub's own listing. Offline (``HF_HUB_OFFLINE=1`` or no network): what the cache
    holds of that revision, so a rerun offline reads what an earlier run downloaded.
    """
    hf = _hub()
    where = f"{repo_type} repository {repo} at revision {revision!r}"
    if not hf.constants.HF_HUB_OFFLINE:
        from huggingface_hub import errors
        try:
            info = hf.HfApi().repo_info(repo, revision=revision, repo_type=repo_type)
            return Listing(repo, revision, info.sha, repo_type, tuple(s.rfilename for s in info.siblings), cache_dir)
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
            with _explained(where, cache_dir):
                raise e
        except Exception as e:  # noqa: BLE001  no network, or the Hub failing: read what the cache holds
            logging.warning("%s: the Hub's listing failed (%s); using the cached files", where, e)
    with _explained(where, cache_dir):
        path = epath.Path(hf.snapshot_download(repo, revision=revision, repo_type=repo_type, cache_dir=cache_dir,
                                               local_files_only=True))
    files = tuple(sorted(os.path.relpath(os.path.join(folder, f), path)  # a local cache: plain os.walk
                         for folder, _, names in os.walk(path) for f in names))
    return Listing(repo, revision, _commit_of(path, revision), repo_type, files, cache_dir)


def unzip_once(snapshot_: Snapshot, into) -> epath.Path:
    """The snapshot's folders, with each ``*.zip`` at its top extracted beside them (once).

    The release ships some datasets as zip archives of ``Core-*`` folders. Archives are
    extracted into ``into`` (outside the Hugging Face cache, which holds only what it
    downloaded), each marked done only when complete, so an interrupted extraction starts
    that archive again. A snapshot without archives is returned as it is.
    """
    archives = snapshot_.glob("*.zip")
    if not archives:
        return snapshot_.path
    out = epath.Path(into)
    out.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        done = out / f".{archive.name}.done"
        if done.exists() and done.read_text() == snapshot_.commit:
            continue
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(out)
        except zipfile.BadZipFile as e:
            raise HubError(f"{archive} is not a complete zip archive: delete it and download again") from e
        done.write_text(snapshot_.commit)
    return out
