"""store.download against an in-memory Source: selection, verification, locking, publishing, reuse."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from radixserve.model_store.base import (
    Checksum,
    ChecksumMismatchError,
    DiskFullError,
    NotFoundError,
    RemoteFile,
    Snapshot,
    SourceError,
)
from radixserve.model_store.progress import JsonProgress
from radixserve.model_store.store import (
    MANIFEST_NAME,
    DestinationError,
    LockTimeoutError,
    NotWritableError,
    download,
    lock_path,
    read_manifest,
    staging_dir,
)


def sha256(data: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(data).hexdigest())


def git_sha1(data: bytes) -> Checksum:
    return Checksum("git-sha1", hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())


class FakeSource:
    """Files held in memory; counts fetches; can lie about content or fail."""

    def __init__(self, files: dict[str, bytes], revision: str = "rev1") -> None:
        self.files, self.revision = dict(files), revision
        self.served: dict[str, bytes] = dict(files)  # what fetch writes (differs to simulate corruption)
        self.fetches: Counter[str] = Counter()
        self.fail: dict[str, BaseException] = {}
        self.gate: threading.Event | None = None  # when set, fetch waits for it
        self.fetching = threading.Event()  # set when a fetch starts

    def describe(self) -> str:
        return "fake://model"

    def snapshot(self) -> Snapshot:
        checksum = {p: (git_sha1(d) if p.endswith(".json") else sha256(d)) for p, d in self.files.items()}
        return Snapshot(self.revision, [RemoteFile(p, len(d), checksum[p]) for p, d in self.files.items()])

    def fetch(self, file: RemoteFile, revision: str, staging: Path) -> Path:
        assert revision == self.revision
        self.fetching.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.fetches[file.path] += 1
        if file.path in self.fail:
            raise self.fail[file.path]
        target = staging / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.served[file.path])
        return target


MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b'{"version": "1.0"}',
    "model.safetensors": bytes(range(256)) * 40,
    "pytorch_model.bin": b"pickles",
}
SELECTED = {"config.json", "tokenizer.json", "model.safetensors"}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME}


def test_download_publishes_the_selected_files_with_a_manifest(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    dest = tmp_path / "m"
    result = download(source, dest)
    assert tree(dest) == {p: MODEL[p] for p in SELECTED}
    assert not result.cache_hit and result.bytes_downloaded == result.bytes_total == sum(
        len(MODEL[p]) for p in SELECTED)
    manifest = read_manifest(dest)
    assert manifest is not None and manifest.uri == "fake://model" and manifest.revision == "rev1"
    assert {f.path: f.size for f in manifest.files} == {p: len(MODEL[p]) for p in SELECTED}
    assert json.loads((dest / MANIFEST_NAME).read_text())["files"][0]["checksum"]["kind"] in ("sha256", "git-sha1")
    assert not staging_dir(dest).exists()


def test_second_call_is_a_cache_hit_that_fetches_nothing(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    download(source, tmp_path / "m")
    source.fetches.clear()
    result = download(source, tmp_path / "m")
    assert result.cache_hit and result.bytes_downloaded == 0 and not source.fetches


def test_a_missing_file_is_not_a_cache_hit(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    download(source, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    source.fetches.clear()
    result = download(source, tmp_path / "m")
    assert not result.cache_hit and (tmp_path / "m" / "model.safetensors").read_bytes() == MODEL["model.safetensors"]


def test_checksum_mismatch_is_refused_and_nothing_is_published(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    good = MODEL["model.safetensors"]
    source.served["model.safetensors"] = good[:100] + b"X" + good[101:]
    dest = tmp_path / "m"
    with pytest.raises(ChecksumMismatchError) as info:
        download(source, dest, max_workers=1)
    message = str(info.value)
    assert "model.safetensors" in message and hashlib.sha256(good).hexdigest() in message
    assert f"sha256 {hashlib.sha256(source.served['model.safetensors']).hexdigest()}" in message
    assert not dest.exists()
    assert not (staging_dir(dest) / "model.safetensors").exists()  # the bad file is gone
    assert (staging_dir(dest) / "config.json").exists()  # good files stay for the next run


def test_git_blob_checksum_and_size_are_checked(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    source.served["config.json"] = b'{"model_type": "llamb"}'  # same size, other content
    with pytest.raises(ChecksumMismatchError, match="git-sha1"):
        download(source, tmp_path / "m")
    source.served["config.json"] = b"{}"
    with pytest.raises(ChecksumMismatchError, match="bytes"):
        download(source, tmp_path / "m")


def test_the_next_call_resumes_from_the_staged_files(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    source.fail["model.safetensors"] = ConnectionError("cut")
    with pytest.raises(ConnectionError):
        download(source, tmp_path / "m", max_workers=1)
    assert not (tmp_path / "m").exists()
    del source.fail["model.safetensors"]
    source.fetches.clear()
    download(source, tmp_path / "m")
    # The fake writes whole files, so "resume" means: the staged files are handed back to the
    # source (a real source skips what is complete); every file is verified again.
    assert tree(tmp_path / "m") == {p: MODEL[p] for p in SELECTED}


def test_staged_data_of_another_revision_is_discarded(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    staging = staging_dir(dest)
    staging.mkdir()
    (staging / ".radixserve-staging.json").write_text(json.dumps({"revision": "old"}))
    (staging / "model.safetensors.incomplete").write_bytes(b"stale bytes")
    download(FakeSource(MODEL), dest)
    assert not (dest / "model.safetensors.incomplete").exists() and not staging.exists()


def test_concurrent_downloads_into_one_dest_fetch_once(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    source.gate = threading.Event()
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(download(source, tmp_path / "m")))
    second = threading.Thread(target=lambda: results.append(download(source, tmp_path / "m")))
    first.start()
    assert source.fetching.wait(10)  # the first holds the lock and is fetching
    second.start()
    source.gate.set()
    first.join(20)
    second.join(20)
    assert sorted(r.cache_hit for r in results) == [False, True]
    assert all(n == 1 for n in source.fetches.values()) and set(source.fetches) == SELECTED


def test_lock_timeout(tmp_path: Path) -> None:
    from filelock import FileLock

    dest = tmp_path / "m"
    with FileLock(lock_path(dest)), pytest.raises(LockTimeoutError, match=r"m\.lock"):
        download(FakeSource(MODEL), dest, lock_timeout=0.2)


def test_new_revision_swaps_atomically_and_reuses_unchanged_files(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    download(FakeSource(MODEL), dest)
    old_inode = (dest / "model.safetensors").stat().st_ino
    newer = {**MODEL, "config.json": b'{"model_type": "llama", "v": 2}'}
    source = FakeSource(newer, revision="rev2")
    result = download(source, dest)
    assert not result.cache_hit and read_manifest(dest).revision == "rev2"  # type: ignore[union-attr]
    assert set(source.fetches) == {"config.json"}  # the others were hard-linked from rev1
    assert (dest / "model.safetensors").stat().st_ino == old_inode
    assert tree(dest) == {p: newer[p] for p in SELECTED}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lock"]  # no old copy or staging left


def test_include_and_exclude(tmp_path: Path) -> None:
    download(FakeSource(MODEL), tmp_path / "a", include=["*.json"], exclude=["tokenizer*"])
    assert set(tree(tmp_path / "a")) == {"config.json"}


def test_disk_full_is_detected_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(DiskFullError, match=r"needs \d+ more bytes .* only 1000 bytes"):
        download(FakeSource(MODEL), tmp_path / "m")


def test_a_directory_this_user_cannot_write_is_named_before_any_fetch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which may write anywhere: answer the permission check as a non-root pod would.
    import os

    real_access = os.access
    parent = tmp_path / "node-cache"
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    source = FakeSource(MODEL)
    with pytest.raises(NotWritableError, match=r"node-cache is not writable by uid \d+.*cache.mode node"):
        download(source, parent / "m")
    assert source.fetches == Counter() and not (parent / "m").exists()


def test_enospc_while_writing_is_disk_full(tmp_path: Path) -> None:
    source = FakeSource(MODEL)
    source.fail["model.safetensors"] = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFullError, match="no space left"):
        download(source, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_foreign_non_empty_dest_is_not_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match="not written by radixserve"):
        download(FakeSource(MODEL), dest)
    assert (dest / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()  # e.g. a volume's empty directory: fine to fill
    download(FakeSource(MODEL), empty)
    assert set(tree(empty)) == SELECTED


def test_json_progress_lines(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    download(FakeSource(MODEL), tmp_path / "m", progress=JsonProgress(out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0]["event"] == "progress" and events[0]["files_total"] == 3
    done = events[-1]
    assert done["event"] == "done" and done["cache_hit"] is False and done["revision"] == "rev1"
    assert done["bytes_total"] == done["bytes_downloaded"] == sum(len(MODEL[p]) for p in SELECTED)
    assert done["path"] == str(tmp_path / "m")


class UnreachableSource(FakeSource):
    def __init__(self, files: dict[str, bytes], error: SourceError) -> None:
        super().__init__(files)
        self.error = error

    def snapshot(self) -> Snapshot:
        raise self.error


def test_an_unreachable_source_falls_back_to_a_complete_earlier_copy(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    with pytest.raises(SourceError, match="cannot reach"):  # nothing cached yet
        download(UnreachableSource(MODEL, SourceError("cannot reach fake")), dest)
    download(FakeSource(MODEL), dest)
    result = download(UnreachableSource(MODEL, SourceError("cannot reach fake")), dest)
    assert result.cache_hit and result.revision == "rev1" and result.bytes_downloaded == 0
    # An answer from the source (401/403/404) is not an outage: it is not papered over.
    with pytest.raises(NotFoundError):
        download(UnreachableSource(MODEL, NotFoundError("gone")), dest)


@pytest.mark.parametrize("bad", ["../escape.safetensors", "/etc/x.safetensors", "a/../../b.safetensors",
                                 MANIFEST_NAME])
def test_paths_outside_the_model_directory_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SourceError, match="refusing the file path"):
        download(FakeSource({**MODEL, bad: b"x"}), tmp_path / "m", include=["*"])
    assert not (tmp_path / "escape.safetensors").exists()
