"""Download a remote model into a directory: the same orchestration for every source.

    snapshot (one metadata call) -> choose files (patterns) -> lock DEST.lock
    -> cache hit? (DEST's manifest has this revision and its files are present) -> done
    -> stage into DEST.partial/ (reuse unchanged files of an older DEST by hard link,
       fetch the rest in parallel, verify size + checksum of each)
    -> write DEST.partial/.radixserve-model.json -> publish: rename DEST.partial to DEST

DEST.partial is a sibling of DEST (same filesystem, so the final rename is atomic) and
survives failures and kills: the next call resumes from what it holds. A reader that sees
DEST sees a complete, verified model with its manifest, never a mix of two revisions.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from radixserve.model_store.base import (
    AccessDeniedError,
    AuthenticationError,
    Checksum,
    ChecksumMismatchError,
    DiskFullError,
    NotFoundError,
    RemoteFile,
    Snapshot,
    Source,
    SourceError,
)
from radixserve.model_store.checksums import verify_multipart
from radixserve.model_store.patterns import select_files
from radixserve.model_store.progress import NoProgress, Progress, staged_bytes

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".radixserve-model.json"
# Inside DEST.partial: which revision the staged data belongs to (data of another is discarded).
STAGING_STATE_NAME = ".radixserve-staging.json"
MANIFEST_FORMAT = 1
_HASH_BLOCK = 8 << 20


class LockTimeoutError(SourceError):
    """Another process held DEST.lock for longer than --lock-timeout."""

    reason = "LockTimeout"


class DestinationError(SourceError):
    """DEST exists and is not a directory this module manages."""

    reason = "BadDestination"


class NotWritableError(DestinationError):
    """DEST's directory cannot be written by this process (the lock, staging and model go there)."""

    reason = "NotWritable"


def _check_writable(dest: Path) -> None:
    """Fail before fetching anything when DEST's directory is not ours to write: the usual cause is
    a node cache directory (hostPath) the kubelet created as root for a non-root pod."""
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(parent, os.W_OK | os.X_OK)
    except PermissionError:
        writable = False
    if not writable:
        uid = os.getuid()
        raise NotWritableError(
            f"{parent} is not writable by uid {uid}: the download lock, staging directory and model are created "
            f"there. Make it writable by this user (e.g. owner {uid} or mode 1777); in Kubernetes with "
            "spec.model.cache.mode node, create the node directory that way on every node (docs/models.md)"
        )


@dataclass(frozen=True)
class Manifest:
    """DEST/.radixserve-model.json: what was downloaded, from where, at which revision."""

    uri: str
    revision: str
    files: list[RemoteFile]
    downloaded_at: str  # ISO 8601, UTC
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        files = [RemoteFile(f["path"], int(f["size"]),
                            Checksum(f["checksum"]["kind"], f["checksum"]["value"]) if f.get("checksum") else None)
                 for f in data["files"]]
        return cls(data["uri"], data["revision"], files, data["downloaded_at"], int(data.get("format", 1)))


@dataclass(frozen=True)
class DownloadResult:
    uri: str
    revision: str
    path: Path
    files: list[RemoteFile]
    bytes_total: int  # of the selected files
    bytes_downloaded: int  # transferred by this call (0 on a cache hit)
    cache_hit: bool
    seconds: float


def read_manifest(dest: Path) -> Manifest | None:
    try:
        return Manifest.from_json((dest / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring the unreadable manifest %s: %s", dest / MANIFEST_NAME, e)
        return None


def _present(dest: Path, files: Sequence[RemoteFile]) -> bool:
    for f in files:
        try:
            if (dest / f.path).stat().st_size != f.size:
                return False
        except OSError:
            return False
    return True


def is_cache_hit(dest: Path, manifest: Manifest | None, revision: str, wanted: Sequence[RemoteFile]) -> bool:
    """DEST holds `revision` with every wanted file at its size (checksums were verified on download)."""
    if manifest is None or manifest.revision != revision:
        return False
    recorded = {f.path: f for f in manifest.files}
    return all(recorded.get(f.path) == f for f in wanted) and _present(dest, wanted)


# ---- checksums -----------------------------------------------------------------------------------
def _digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    h = hashlib.new(algorithm)
    h.update(prefix)
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _mismatch(path: Path, file: RemoteFile, uri: str) -> tuple[str, str] | None:
    """(expected, got) if `path` is not `file`, else None."""
    size = path.stat().st_size
    if size != file.size:
        return f"{file.size} bytes", f"{size} bytes"
    if file.checksum is None:
        return None
    kind, value = file.checksum.kind, file.checksum.value.lower()
    if kind == "s3-multipart":  # only checkable by guessing the uploader's part size
        verdict = verify_multipart(path, value, file.size)
        if verdict is None:
            logger.warning("%s: %s: cannot check the multipart ETag %s (the upload's part size is unknown); "
                           "checked the size only", uri, file.path, value)
        return None if verdict is not False else (f"ETag {value}", "no plausible part size reproduces it")
    if kind == "sha256":
        got = _digest(path, "sha256")
    elif kind == "git-sha1":
        got = _digest(path, "sha1", b"blob %d\0" % size)
    else:
        got = _digest(path, "md5")
    return None if got == value else (f"{kind} {value}", f"{kind} {got}")


def verify_file(path: Path, file: RemoteFile, uri: str) -> None:
    """Size and checksum of a fetched file; on mismatch the file is deleted and ChecksumMismatchError raised."""
    mismatch = _mismatch(path, file, uri)
    if mismatch is None:
        return
    path.unlink(missing_ok=True)
    raise ChecksumMismatchError(
        f"{uri}: {file.path} does not match the source: expected {mismatch[0]}, got {mismatch[1]}; the file "
        "was deleted (run the download again; if it repeats, the source or a proxy serves different bytes)"
    )


# ---- staging and publishing --------------------------------------------------------------------
def staging_dir(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def _prepare_staging(staging: Path, revision: str) -> None:
    """Keep staged data only if it belongs to `revision`: resuming a file of another revision
    would splice two contents together."""
    state = staging / STAGING_STATE_NAME
    if staging.exists():
        try:
            same = json.loads(state.read_text()).get("revision") == revision
        except (OSError, ValueError):
            same = False
        if not same:
            logger.info("discarding staged data of another revision in %s", staging)
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"revision": revision}) + "\n")


def _reuse_unchanged(dest: Path, old: Manifest | None, staging: Path, files: Sequence[RemoteFile]) -> set[str]:
    """Hard-link (or copy) files whose checksum did not change from the published older revision."""
    if old is None:
        return set()
    previous = {f.path: f for f in old.files}
    reused: set[str] = set()
    for f in files:
        before = previous.get(f.path)
        src, dst = dest / f.path, staging / f.path
        if before is None or f.checksum is None or before.checksum != f.checksum or before.size != f.size:
            continue
        if not _present(dest, [f]):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        reused.add(f.path)
    if reused:
        logger.info("reusing %d unchanged files from %s (revision %s)", len(reused), dest, old.revision)
    return reused


def _prune(staging: Path, files: Sequence[RemoteFile]) -> None:
    """Remove whatever is not part of the model (stale files of earlier attempts, library leftovers)."""
    keep = {staging / f.path for f in files}
    for root, dirs, names in os.walk(staging, topdown=False):
        for name in names:
            p = Path(root) / name
            if p not in keep:
                p.unlink()
        for d in dirs:
            p = Path(root) / d
            if not any(p.iterdir()):
                p.rmdir()


def _fsync_file(path: Path) -> None:
    """On disk before it is published: a cache hit checks sizes only, so a file cut short by a
    power loss after the rename would be served as is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _check_dest(dest: Path) -> None:
    """Before downloading: DEST may be absent, empty, or an earlier download, nothing else."""
    if dest.exists() and not dest.is_dir():
        raise DestinationError(f"{dest} exists and is not a directory")
    if dest.is_dir() and read_manifest(dest) is None and any(dest.iterdir()):
        raise DestinationError(
            f"{dest} exists, is not empty and was not written by radixserve (no {MANIFEST_NAME}); "
            "choose a new or empty directory"
        )


def _publish(staging: Path, dest: Path) -> None:
    _check_dest(dest)
    if dest.is_dir() and read_manifest(dest) is None:
        dest.rmdir()  # empty (checked above)
    if not dest.exists():
        os.rename(staging, dest)
    elif _exchange(staging, dest):
        shutil.rmtree(staging)  # now the older revision
    else:
        # No atomic swap here: DEST is briefly absent (never mixed) between the two renames.
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
        os.rename(staging, dest)
        shutil.rmtree(old)
    _fsync_dir(dest.parent)


# ---- the download --------------------------------------------------------------------------------
def _check_free_space(staging: Path, needed: int, uri: str) -> None:
    free = shutil.disk_usage(staging).free
    if needed > free:
        raise DiskFullError(
            f"{uri}: needs {needed} more bytes ({needed / 2**30:.2f} GiB) in {staging.parent} but only "
            f"{free} bytes ({free / 2**30:.2f} GiB) are free"
        )


def _disk_full(uri: str, staging: Path, remaining: int, error: OSError) -> DiskFullError:
    free = shutil.disk_usage(staging).free if staging.exists() else 0
    return DiskFullError(
        f"{uri}: no space left on the device writing {error.filename or staging}: about {remaining} more "
        f"bytes were needed, {free} bytes are free; free space or use a larger volume, then run again "
        "(downloaded data is kept and resumed)"
    )


def _acquire(lock: FileLock, path: Path, timeout: float | None) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        logger.info("waiting for another download into the same directory to finish (lock %s)", path)
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except Timeout:
        raise LockTimeoutError(
            f"another process held {path} for more than {timeout:g}s (a download into the same directory; "
            "the lock is released when that process ends)"
        ) from None


class _Transfer:
    """One download's fetch-and-verify of the files not reused, in parallel."""

    def __init__(self, source: Source, snap: Snapshot, staging: Path, progress: Progress) -> None:
        self.source, self.snap, self.staging, self.progress = source, snap, staging, progress
        self.uri = source.describe()

    def fetch_one(self, file: RemoteFile) -> None:
        path = self.source.fetch(file, self.snap.revision, self.staging)
        if path != self.staging / file.path:
            raise SourceError(f"{self.uri}: the source wrote {file.path} to {path}, not under {self.staging}")
        verify_file(path, file, self.uri)
        _fsync_file(path)

    def run(self, files: Sequence[RemoteFile], max_workers: int) -> None:
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="download") as pool:
            futures: dict[Future[None], RemoteFile] = {pool.submit(self.fetch_one, f): f for f in files}
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                error = fut.exception()
                if error is None:
                    self.progress.file_done()
                    continue
                if not errors:  # stop starting new files; the running ones finish (their data stays)
                    for other in futures:
                        other.cancel()
                errors.append(error)
        if errors:
            raise errors[0]


def download(source: Source, dest: Path, *, include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None, max_workers: int = 8, progress: Progress | None = None,
             lock_timeout: float | None = None) -> DownloadResult:
    """Bring `source` to `dest` (see the module docstring). Raises SourceError subclasses.

    lock_timeout: seconds to wait for another process downloading into `dest` (None: forever).
    When the source cannot be asked (network down, server error; not 401/403/404) and `dest`
    holds a complete earlier download of the same URI, that copy is used, with a warning.
    """
    started = time.monotonic()
    progress = progress or NoProgress()
    dest = Path(os.path.abspath(dest))
    uri = source.describe()
    try:
        snap = source.snapshot()
    except (AuthenticationError, AccessDeniedError, NotFoundError):
        raise  # the source answered: this model may not (or no longer) be had
    except SourceError as e:
        cached = _cached_copy(dest, uri)
        if cached is None:
            raise
        logger.warning("%s; using the copy of revision %s already in %s", e, cached.revision, dest)
        result = DownloadResult(uri, cached.revision, dest, cached.files, sum(f.size for f in cached.files), 0,
                                True, time.monotonic() - started)
        progress.finish(result)
        return result
    files = select_files(snap.files, uri, include, exclude)
    _check_paths(files, uri)
    _check_writable(dest)
    lock = FileLock(lock_path(dest))
    _acquire(lock, lock_path(dest), lock_timeout)
    try:
        old = read_manifest(dest)
        hit = is_cache_hit(dest, old, snap.revision, files)
        if hit and staging_dir(dest).exists():  # an abandoned attempt; nobody else uses it while we hold the lock
            shutil.rmtree(staging_dir(dest), ignore_errors=True)
        downloaded = 0 if hit else _download_locked(source, snap, files, dest, old, progress, max_workers)
    finally:
        lock.release()
    result = DownloadResult(uri, snap.revision, dest, files, sum(f.size for f in files), downloaded, hit,
                            time.monotonic() - started)
    if hit:
        logger.info("%s (revision %s) is already in %s: nothing to download", uri, snap.revision, dest)
    else:
        logger.info("%s (revision %s) published in %s: %d files, %d bytes downloaded in %.1fs", uri,
                    snap.revision, dest, len(files), downloaded, result.seconds)
    progress.finish(result)
    return result


def _cached_copy(dest: Path, uri: str) -> Manifest | None:
    """DEST's manifest if DEST holds a complete download of `uri` (any revision)."""
    manifest = read_manifest(dest)
    if manifest is None or manifest.uri != uri or not _present(dest, manifest.files):
        return None
    return manifest


def _check_paths(files: Sequence[RemoteFile], uri: str) -> None:
    """A listing is remote input: a path must stay inside the model directory."""
    for f in files:
        parts = f.path.split("/")
        if f.path.startswith("/") or "\\" in f.path or any(p in ("", ".", "..") for p in parts) \
                or parts[0] in (MANIFEST_NAME, STAGING_STATE_NAME):
            raise SourceError(f"{uri}: refusing the file path {f.path!r}: it would land outside the model "
                              "directory or over radixserve's own files")


def _download_locked(source: Source, snap: Snapshot, files: Sequence[RemoteFile], dest: Path,
                     old: Manifest | None, progress: Progress, max_workers: int) -> int:
    """Stage, verify, write the manifest and publish; returns the bytes transferred."""
    uri = source.describe()
    staging = staging_dir(dest)
    _check_dest(dest)
    try:
        downloaded = _stage(source, snap, files, dest, old, progress, max_workers)
        _prune(staging, files)
        manifest = Manifest(uri, snap.revision, list(files), datetime.now(UTC).isoformat(timespec="seconds"))
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
        _fsync_file(staging / MANIFEST_NAME)
        _fsync_dir(staging)
        _publish(staging, dest)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            remaining = sum(f.size for f in files) - staged_bytes(staging)
            raise _disk_full(uri, staging, max(0, remaining), e) from e
        raise
    return downloaded


def _stage(source: Source, snap: Snapshot, files: Sequence[RemoteFile], dest: Path, old: Manifest | None,
           progress: Progress, max_workers: int) -> int:
    """Fill DEST.partial with verified files; returns the bytes transferred."""
    uri = source.describe()
    staging = staging_dir(dest)
    _prepare_staging(staging, snap.revision)
    reused = _reuse_unchanged(dest, old, staging, files)
    todo = [f for f in files if f.path not in reused]
    reused_bytes = sum(f.size for f in files if f.path in reused)
    before = staged_bytes(staging)
    remaining = max(0, sum(f.size for f in todo) - (before - reused_bytes))
    _check_free_space(staging, remaining, uri)
    progress.start(uri=uri, files_total=len(files), bytes_total=sum(f.size for f in files), staging=staging)
    for _ in reused:
        progress.file_done()
    try:
        _Transfer(source, snap, staging, progress).run(todo, max_workers)
    finally:
        progress.stop()
    return max(0, staged_bytes(staging) - before)

