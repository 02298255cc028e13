"""Snapshots from a Hub-laid-out cache, offline, and the release's zipped datasets extracted once."""
import os
import zipfile

import pytest

hub_constants = pytest.importorskip("huggingface_hub.constants")

from copgen_jax import hub  # noqa: E402
from tests.fixtures.hub_cache import put_repo  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def _zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return str(path)


def test_a_snapshot_resolves_its_commit_and_names_missing_files(tmp_path):
    commit = put_repo(tmp_path / "cache", "owner/name", {"a/b.txt": b"x"}, repo_type="dataset")
    snap = hub.snapshot("owner/name", repo_type="dataset", cache_dir=str(tmp_path / "cache"))
    assert snap.commit == commit and snap.record() == {"repo": "owner/name", "revision": "main", "commit": commit}
    assert snap.need("a/b.txt").read_text() == "x"
    with pytest.raises(hub.HubError, match="has no a/c.txt.*incomplete"):
        snap.need("a/c.txt")
    with pytest.raises(hub.HubError, match="'v2'.*not in the cache"):
        hub.snapshot("owner/name", "v2", repo_type="dataset", cache_dir=str(tmp_path / "cache"))


def test_archives_are_extracted_once_and_again_after_an_interruption(tmp_path):
    archive = _zip(tmp_path / "part1.zip", {"region/Core-DEM/x.txt": "dem"})
    put_repo(tmp_path / "cache", "owner/region", {"part1.zip": archive}, repo_type="dataset")
    snap = hub.snapshot("owner/region", repo_type="dataset", cache_dir=str(tmp_path / "cache"))
    out = hub.unzip_once(snap, tmp_path / "extracted")
    extracted = out / "region" / "Core-DEM" / "x.txt"
    assert extracted.read_text() == "dem"
    extracted.write_text("kept")
    hub.unzip_once(snap, tmp_path / "extracted")
    assert extracted.read_text() == "kept"  # done: not extracted again
    os.remove(tmp_path / "extracted" / ".part1.zip.done")  # interrupted before it was marked done
    hub.unzip_once(snap, tmp_path / "extracted")
    assert extracted.read_text() == "dem"


def test_a_truncated_archive_is_a_clear_error(tmp_path):
    data = open(_zip(tmp_path / "part1.zip", {"Core-DEM/x.txt": "dem" * 100}), "rb").read()
    put_repo(tmp_path / "cache", "owner/region", {"part1.zip": data[: len(data) // 2]}, repo_type="dataset")
    snap = hub.snapshot("owner/region", repo_type="dataset", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(hub.HubError, match="part1.zip is not a complete zip archive"):
        hub.unzip_once(snap, tmp_path / "extracted")
    assert not (tmp_path / "extracted" / ".part1.zip.done").exists()
