"""The contract between the download orchestration (`store`) and a remote source (`hf`, `s3`).

A source answers two questions: what files make up the model right now (one metadata
call, `snapshot`), and how to bring one of them to disk (`fetch`). Everything else
(choosing files, locking, running fetches in parallel, verifying checksums, progress,
atomic publish, cache hits) lives in `store` and is the same for every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

# sha256: a hex digest of the content (Hub LFS files, S3 additional checksums).
# git-sha1: the git blob id, sha1(b"blob <size>\0" + content) (Hub files kept in git, not LFS).
# md5: a single-part S3 ETag.
# s3-multipart: an ETag "md5-of-part-md5s-N"; checkable only when the part size is known.
ChecksumKind = Literal["sha256", "git-sha1", "md5", "s3-multipart"]


@dataclass(frozen=True)
class Checksum:
    kind: ChecksumKind
    value: str  # lower-case hex (for s3-multipart: "<hex>-<parts>")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative POSIX path inside the model directory
    size: int
    checksum: Checksum | None = None  # None: the source publishes none; only the size is checked


@dataclass(frozen=True)
class Snapshot:
    """The model as the source holds it at one moment."""

    # An immutable id of this content: the commit sha for the Hub; for S3 a digest of the
    # listing (keys, sizes, ETags), so a changed object is a new revision.
    revision: str
    files: list[RemoteFile] = field(default_factory=list)


class SourceError(Exception):
    """A download failure with a message meant for the user (it ends up in a status condition)."""

    # Short CamelCase cause, used as the ModelReady condition's reason by the operator.
    reason = "DownloadFailed"


class AuthenticationError(SourceError):
    """401: no or invalid credentials."""

    reason = "Unauthorized"


class AccessDeniedError(SourceError):
    """403: the credentials are valid but may not read this model (gated repo, bucket policy)."""

    reason = "Forbidden"


class NotFoundError(SourceError):
    """404: no such repository, revision, bucket or prefix (or one the credentials cannot see)."""

    reason = "NotFound"


class ChecksumMismatchError(SourceError):
    """A fetched file does not match the source's checksum or size; the file was discarded."""

    reason = "ChecksumMismatch"


class DiskFullError(SourceError):
    """ENOSPC while writing; says how much was needed and how much is free."""

    reason = "DiskFull"


class Source(Protocol):
    """One remote model. Implementations are used from several threads at once (one per file)."""

    def describe(self) -> str:
        """The reference as users wrote it (for messages), e.g. hf://org/name@main."""
        ...

    def snapshot(self) -> Snapshot:
        """List the model's files with sizes and checksums. Raises SourceError subclasses."""
        ...

    def fetch(self, file: RemoteFile, revision: str, staging: Path) -> Path:
        """Bring `file` (as of `revision`) to `staging / file.path` and return that path.

        Must resume: if an earlier call was interrupted, its partial data lies under
        `staging` (wherever the source's library keeps it) and is continued, not restarted.
        Does not verify checksums (the store does, for every source alike). Raises
        SourceError subclasses for failures a user can act on.
        """
        ...
