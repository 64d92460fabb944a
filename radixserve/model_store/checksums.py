"""Checking a file against an S3 multipart ETag.

A multipart upload's ETag is md5(md5(part 1) + md5(part 2) + ... + md5(part N)) in hex,
followed by "-N". It depends on where the uploader cut the parts, which the listing does
not say, so it can only be checked by guessing the part size. The guesses are the sizes
S3 tools use (AWS CLI / boto3: 8 MiB, rclone and the MinIO Python SDK: 5 MiB, s3cmd: 15 MiB,
mc / minio-go: 16 MiB, ...) and the whole-MiB sizes that split the file into exactly N parts.

`verify_multipart` answers True (a guess reproduces the ETag), False (every plausible
whole-MiB part size was tried and none does: the file is not what was uploaded) or None
(no guess was possible or the guesses had to be cut short: unverifiable, check the size only).
False assumes the uploader cut whole MiB (or exactly size/N bytes), as every common tool does;
a file uploaded with, say, 5,000,000-byte parts reads as changed.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

MiB = 1024 * 1024
# Part sizes used by common S3 clients by default, smallest first.
COMMON_PART_SIZES_MIB = (5, 8, 15, 16, 32, 64, 100, 128, 256, 512)
# How many whole-MiB part sizes around size/N are tried besides the common ones: each costs an
# md5 over the whole file, and when N is small the range of sizes giving N parts is huge.
MAX_RANGE_CANDIDATES = 4
_MULTIPART = re.compile(r"^([0-9a-f]{32})-([1-9][0-9]{0,4})$")
_CHUNK = MiB


def parse_multipart_etag(etag: str) -> tuple[str, int] | None:
    """("<md5 of part md5s>", N) for an ETag "hex-N" (quotes and case tolerated), else None."""
    match = _MULTIPART.match(etag.strip('"').lower())
    return (match.group(1), int(match.group(2))) if match else None


def _parts(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def multipart_etag(path: Path | str, part_size: int) -> str:
    """The ETag S3 gives `path` uploaded in parts of `part_size` bytes (the last one shorter)."""
    return _multipart_etags(Path(path), [part_size])[part_size]


def candidate_part_sizes(size: int, parts: int) -> tuple[list[int], bool]:
    """Part sizes that cut `size` bytes into exactly `parts` parts, and whether the list is complete.

    Complete means: every whole-MiB size that gives `parts` parts is in it (with the common sizes
    and the exact ceil(size/parts) split), so a file none of them reproduces was changed.
    """
    if parts == 1:
        # One part: the ETag is md5(md5(file)) whatever the part size was.
        return [max(size, 1)], True
    # (parts-1) * p < size <= parts * p
    low = math.ceil(size / parts)
    high = math.ceil(size / (parts - 1)) - 1
    if low > high:
        return [], True
    found = {p * MiB for p in COMMON_PART_SIZES_MIB if low <= p * MiB <= high}
    found.add(low)
    first_mib, last_mib = math.ceil(low / MiB), high // MiB
    in_range = range(max(first_mib, 1), last_mib + 1)
    found.update(m * MiB for m in in_range[:MAX_RANGE_CANDIDATES])
    return sorted(found), len(in_range) <= MAX_RANGE_CANDIDATES


def verify_multipart(path: Path | str, etag: str, size: int) -> bool | None:
    """Whether `path` (expected `size` bytes) matches the multipart ETag `etag`; None: unverifiable."""
    parsed = parse_multipart_etag(etag)
    path = Path(path)
    if parsed is None:
        return None
    if path.stat().st_size != size:
        return False
    digest, parts = parsed
    candidates, complete = candidate_part_sizes(size, parts)
    if not candidates:
        return None
    etags = _multipart_etags(path, candidates)
    if any(value == f"{digest}-{parts}" for value in etags.values()):
        return True
    return False if complete else None


class _PartHasher:
    """The multipart ETag of a stream for one part size, fed chunk by chunk."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.current = hashlib.md5(usedforsecurity=False)
        self.filled = 0  # bytes in the current part
        self.digests = bytearray()  # md5 digests of the finished parts

    def update(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            piece = data[pos : pos + self.part_size - self.filled]
            self.current.update(piece)
            self.filled += len(piece)
            pos += len(piece)
            if self.filled == self.part_size:
                self.digests += self.current.digest()
                self.current, self.filled = hashlib.md5(usedforsecurity=False), 0

    def etag(self) -> str:
        digests = bytearray(self.digests)
        if self.filled or not digests:  # the shorter last part (or an empty file's single part)
            digests += self.current.digest()
        return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(digests) // 16}"


def _multipart_etags(path: Path, part_sizes: list[int]) -> dict[int, str]:
    """Multipart ETags of `path` for several part sizes, in one read of the file."""
    hashers = [_PartHasher(p) for p in part_sizes]
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for hasher in hashers:
                hasher.update(memoryview(chunk))
    return {h.part_size: h.etag() for h in hashers}
