"""s3:// models against a real S3-compatible server on loopback (moto in server mode, see s3_server).

Everything goes over HTTP with the minio client: listing, ETags, Range requests,
If-Match, IAM errors. The server's request log shows what was actually transferred.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio.error import S3Error
from minio.sse import SseKMS, SseS3

from radixserve.model_store.base import (
    AccessDeniedError,
    AuthenticationError,
    Checksum,
    ChecksumMismatchError,
    NotFoundError,
    RemoteFile,
    Snapshot,
    SourceError,
)
from radixserve.model_store.checksums import MiB, candidate_part_sizes, multipart_etag, verify_multipart
from radixserve.model_store.s3 import PARTIAL_DIR, S3Source, checksum_from_etag, parse_endpoint, partial_paths
from radixserve.model_store.store import download
from radixserve.model_store.uri import S3Model
from tests.model_store.s3_server import REPO, Credentials, LoggedRequest, S3Server, start_s3_server

pytestmark = pytest.mark.slow

BUCKET = "models"
PREFIX = "org/tiny"
PART = 5 * MiB  # the multipart upload's part size (S3's minimum)
_rng = random.Random(18)
MODEL = {
    "config.json": b'{"model_type": "llama", "hidden_size": 64}',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "empty.txt": b"",
    # > PART: uploaded in 3 parts, so its ETag is "<hex>-3", not an md5.
    "model.safetensors": _rng.randbytes(2 * PART + 123_457),
}
BIG_KEY = "big/weights.bin"  # single-part, large enough to kill a download in the middle
BIG = _rng.randbytes(24 * MiB)


def _put(server: S3Server, key: str, data: bytes, part_size: int = 64 * MiB) -> str:
    result = server.client().put_object(BUCKET, key, io.BytesIO(data), len(data), part_size=part_size)
    return str(result.etag)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    try:
        server.client().make_bucket(BUCKET)
        for path, data in MODEL.items():
            _put(server, f"{PREFIX}/{path}", data, part_size=PART)
        _put(server, f"{PREFIX}/sub/", b"")  # a "folder" marker, as S3 consoles create: no file
        _put(server, "org/tiny-other/model.safetensors", b"not under org/tiny/")
        _put(server, BIG_KEY, BIG)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The process environment as the operator sets it: the admin's keys, no other AWS settings."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3.admin.env().items():
        monkeypatch.setenv(name, value)
    return s3


def _use(monkeypatch: pytest.MonkeyPatch, credentials: Credentials) -> None:
    for name, value in credentials.env().items():
        monkeypatch.setenv(name, value)


class RecordingPool(urllib3.PoolManager):
    """The HTTP client handed to minio: records each request's method, URL and Range header."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, str | None]] = []

    # PoolManager's own signature, which urllib3 declares narrower than RequestMethods'.
    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        headers = kw.get("headers") or {}
        self.sent.append((method, url, headers.get("Range")))
        return super().urlopen(method, url, redirect=redirect, **kw)

    def gets(self, key: str) -> list[str | None]:
        """The Range header of every GET of `key` (None: the whole object)."""
        return [rng for method, url, rng in self.sent if method == "GET" and url.split("?")[0].endswith(f"/{key}")]


def source(s3: S3Server, prefix: str = PREFIX, pool: urllib3.PoolManager | None = None) -> S3Source:
    return S3Source(S3Model(BUCKET, prefix), endpoint=s3.endpoint, http_client=pool)


def _file(snap: Snapshot, path: str) -> RemoteFile:
    return next(f for f in snap.files if f.path == path)


def _object_gets(log: list[LoggedRequest], key: str) -> list[LoggedRequest]:
    return [r for r in log if r.method == "GET" and r.path == f"/{BUCKET}/{key}"]


# --- listing -------------------------------------------------------------------------------


def test_snapshot_lists_the_files_under_the_prefix_with_sizes_and_etag_checksums(s3_env: S3Server) -> None:
    snap = source(s3_env).snapshot()
    assert [f.path for f in snap.files] == sorted(MODEL)  # no "sub/" marker, nothing of org/tiny-other
    for f in snap.files:
        assert f.size == len(MODEL[f.path])
    for path in ("config.json", "tokenizer/vocab.txt", "empty.txt"):
        assert _file(snap, path).checksum == Checksum("md5", hashlib.md5(MODEL[path]).hexdigest())
    weights = MODEL["model.safetensors"]
    part_md5s = b"".join(hashlib.md5(weights[i:i + PART]).digest() for i in range(0, len(weights), PART))
    assert _file(snap, "model.safetensors").checksum == Checksum(
        "s3-multipart", f"{hashlib.md5(part_md5s).hexdigest()}-3")
    assert len(snap.revision) == 64 and source(s3_env).snapshot().revision == snap.revision


def test_revision_changes_when_an_object_changes(s3_env: S3Server) -> None:
    _put(s3_env, "org/rev/model.safetensors", b"version 1")
    before = source(s3_env, "org/rev").snapshot()
    _put(s3_env, "org/rev/model.safetensors", b"version 2")
    after = source(s3_env, "org/rev").snapshot()
    assert before.revision != after.revision
    assert before.files[0].checksum != after.files[0].checksum


def test_sse_kms_objects_claim_no_md5(s3_env: S3Server, tmp_path: Path) -> None:
    """AWS gives SSE-KMS objects ETags that are not content md5s (moto does not imitate that):
    their checksum must be None, or every download of them would fail verification."""
    client = s3_env.client()
    client.put_object(BUCKET, "org/kms/model.safetensors", io.BytesIO(b"secret"), 6, sse=SseKMS("key-1", {}))
    client.put_object(BUCKET, "org/kms/config.json", io.BytesIO(b"{}"), 2, sse=SseS3())  # ETag stays an md5
    src = source(s3_env, "org/kms")
    snap = src.snapshot()
    assert _file(snap, "model.safetensors").checksum is None
    assert _file(snap, "config.json").checksum == Checksum("md5", hashlib.md5(b"{}").hexdigest())
    assert src.fetch(_file(snap, "model.safetensors"), snap.revision, tmp_path).read_bytes() == b"secret"


# --- fetching and resuming -----------------------------------------------------------------


def test_fetch_brings_identical_bytes_and_leaves_no_partial_data(s3_env: S3Server, tmp_path: Path) -> None:
    src = source(s3_env)
    snap = src.snapshot()
    for f in snap.files:
        assert src.fetch(f, snap.revision, tmp_path) == tmp_path / f.path
        assert (tmp_path / f.path).read_bytes() == MODEL[f.path]
    assert not (tmp_path / PARTIAL_DIR).exists()
    weights = _file(snap, "model.safetensors")
    assert weights.checksum is not None
    assert verify_multipart(tmp_path / weights.path, weights.checksum.value, weights.size) is True


def test_resume_requests_only_the_missing_bytes(s3_env: S3Server, tmp_path: Path) -> None:
    src = source(s3_env, pool=(pool := RecordingPool()))
    snap = src.snapshot()
    weights = _file(snap, "model.safetensors")
    assert weights.checksum is not None
    have = PART + 4321
    part, tag = partial_paths(tmp_path, weights.path)
    part.parent.mkdir(parents=True)
    part.write_bytes(MODEL[weights.path][:have])  # what an interrupted fetch left
    tag.write_text(weights.checksum.value)
    logged = len(s3_env.requests())

    src.fetch(weights, snap.revision, tmp_path)

    assert (tmp_path / weights.path).read_bytes() == MODEL[weights.path]
    assert pool.gets(f"{PREFIX}/{weights.path}") == [f"bytes={have}-"]
    log = s3_env.wait_for_requests(lambda log: bool(_object_gets(log[logged:], f"{PREFIX}/{weights.path}")))
    assert [r.status for r in _object_gets(log[logged:], f"{PREFIX}/{weights.path}")] == [206]  # Partial Content


def test_resume_keeps_the_bytes_already_on_disk_so_a_corrupt_partial_fails_the_checksum(
        s3_env: S3Server, tmp_path: Path) -> None:
    """Proof that the first bytes are not fetched again: bad bytes left on disk stay in the result,
    and the md5 from the ETag refuses the result."""
    src = source(s3_env)
    snap = src.snapshot()
    config = _file(snap, "config.json")
    assert config.checksum is not None
    part, tag = partial_paths(tmp_path, config.path)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"X" * 10)
    tag.write_text(config.checksum.value)

    fetched = src.fetch(config, snap.revision, tmp_path).read_bytes()

    assert fetched == b"X" * 10 + MODEL["config.json"][10:]
    assert hashlib.md5(fetched).hexdigest() != config.checksum.value


def test_partial_bytes_of_another_version_are_discarded(s3_env: S3Server, tmp_path: Path) -> None:
    src = source(s3_env, pool=(pool := RecordingPool()))
    snap = src.snapshot()
    config = _file(snap, "config.json")
    part, tag = partial_paths(tmp_path, config.path)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"X" * 10)
    tag.write_text("0" * 32)  # the ETag of the object when these bytes were received

    assert src.fetch(config, snap.revision, tmp_path).read_bytes() == MODEL["config.json"]
    assert pool.gets(f"{PREFIX}/config.json") == [None]  # the whole object, from byte 0


# A slow network, so that the parent can kill the child process in the middle of the body.
_SLOW_NETWORK = """
import sys, time
import urllib3.response
_read = urllib3.response.HTTPResponse.read
def slow_read(self, *args, **kwargs):
    time.sleep(0.2)
    return _read(self, *args, **kwargs)
urllib3.response.HTTPResponse.read = slow_read
"""

def _kill_after(child: subprocess.Popen[bytes], received: Callable[[], int], at: int,
                why_ended: Callable[[], str] = lambda: "") -> None:
    """SIGKILL `child` once `received()` bytes of its download are on disk (at least `at`), mid-body."""
    try:
        deadline = time.monotonic() + 60
        while received() < at:
            assert child.poll() is None, f"the download ended before it was killed: {why_ended()}"
            assert time.monotonic() < deadline, f"the child never got {at} bytes"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


_KILLED_CHILD = _SLOW_NETWORK + """
from pathlib import Path
from radixserve.model_store.s3 import S3Source
from radixserve.model_store.uri import S3Model

bucket, prefix, endpoint, path, staging = sys.argv[1:]
src = S3Source(S3Model(bucket, prefix), endpoint=endpoint)
snap = src.snapshot()
src.fetch(next(f for f in snap.files if f.path == path), snap.revision, Path(staging))
"""


def test_resume_after_the_downloading_process_was_killed(s3_env: S3Server, tmp_path: Path) -> None:
    prefix, name = BIG_KEY.rsplit("/", 1)
    part, _ = partial_paths(tmp_path, name)
    stderr = tmp_path / "child.stderr"
    with stderr.open("wb") as err:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, BUCKET, prefix, s3_env.endpoint, name,
                                  str(tmp_path)], cwd=REPO, stderr=err)
    _kill_after(child, lambda: part.stat().st_size if part.exists() else 0, 2 * MiB, stderr.read_text)
    have = part.stat().st_size
    assert 2 * MiB <= have < len(BIG)
    assert not (tmp_path / name).exists()

    src = source(s3_env, prefix, pool=(pool := RecordingPool()))
    snap = src.snapshot()
    src.fetch(_file(snap, name), snap.revision, tmp_path)

    assert pool.gets(BIG_KEY) == [f"bytes={have}-"]
    assert (tmp_path / name).read_bytes() == BIG


def test_an_object_replaced_after_the_listing_is_refused(s3_env: S3Server, tmp_path: Path) -> None:
    key = "org/changing/model.safetensors"
    _put(s3_env, key, b"old weights")
    src = source(s3_env, "org/changing")
    snap = src.snapshot()
    _put(s3_env, key, b"new weights!")
    with pytest.raises(SourceError, match="changed on the server after it was listed"):
        src.fetch(snap.files[0], snap.revision, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    fresh = src.snapshot()
    assert src.fetch(fresh.files[0], fresh.revision, tmp_path).read_bytes() == b"new weights!"


# --- checksums -----------------------------------------------------------------------------


def test_etag_checksums_detect_a_tampered_file(s3_env: S3Server, tmp_path: Path) -> None:
    src = source(s3_env)
    snap = src.snapshot()
    for f in snap.files:
        if f.size == 0:
            continue
        path = src.fetch(f, snap.revision, tmp_path)
        assert f.checksum is not None
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        if f.checksum.kind == "md5":
            assert hashlib.md5(data).hexdigest() != f.checksum.value
        else:
            assert verify_multipart(path, f.checksum.value, f.size) is False


def test_multipart_etag_helpers(tmp_path: Path) -> None:
    path = tmp_path / "weights"
    path.write_bytes(MODEL["model.safetensors"])
    size = path.stat().st_size
    etag = multipart_etag(path, PART)
    assert etag.endswith("-3")
    assert verify_multipart(path, etag, size) is True
    assert verify_multipart(path, f'"{etag.upper()}"', size) is True  # as some listings quote it
    assert verify_multipart(path, multipart_etag(path, 4 * MiB), size) is True  # another part size
    assert verify_multipart(path, "0" * 32 + "-3", size) is False  # every plausible part size tried
    assert verify_multipart(path, etag, size + 1) is False
    assert verify_multipart(path, hashlib.md5(b"x").hexdigest(), size) is None  # not a multipart ETag
    # Two parts of a 10 MiB+ file: thousands of part sizes would fit, only some are tried.
    assert candidate_part_sizes(size, 2)[1] is False
    assert verify_multipart(path, "0" * 32 + "-2", size) is None
    one_part = hashlib.md5(hashlib.md5(path.read_bytes()).digest()).hexdigest() + "-1"
    assert verify_multipart(path, one_part, size) is True


def test_checksum_from_etag() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    assert checksum_from_etag(md5) == Checksum("md5", md5)
    assert checksum_from_etag(f'"{md5.upper()}"') == Checksum("md5", md5)
    assert checksum_from_etag(f"{md5}-12") == Checksum("s3-multipart", f"{md5}-12")
    assert checksum_from_etag("not-an-md5") is None


# --- errors --------------------------------------------------------------------------------


def test_unknown_access_key_is_an_authentication_error(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, Credentials("AKIAUNKNOWNKEY000000", "whatever"))
    with pytest.raises(AuthenticationError, match="InvalidAccessKeyId") as info:
        source(s3_env).snapshot()
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "credentialsSecretRef" in str(info.value)
    assert info.value.reason == "Unauthorized"


def test_wrong_secret_is_an_authentication_error(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, Credentials(s3_env.admin.access_key, "not-the-secret"))
    with pytest.raises(AuthenticationError, match=r"SignatureDoesNotMatch.*AWS_SECRET_ACCESS_KEY"):
        source(s3_env).snapshot()


def test_half_set_credentials_say_what_is_missing(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthenticationError, match=r"^AWS_SECRET_ACCESS_KEY is not set"):
        source(s3_env)


def test_valid_keys_without_permission_get_access_denied(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    snap = source(s3_env).snapshot()  # as the admin
    _use(monkeypatch, s3_env.denied)
    denied = source(s3_env)
    with pytest.raises(AccessDeniedError, match=rf"AccessDenied.*s3:ListBucket on {BUCKET}") as info:
        denied.snapshot()
    assert info.value.reason == "Forbidden"
    with pytest.raises(AccessDeniedError, match=f"downloading s3://{BUCKET}/{PREFIX}/config.json"):
        denied.fetch(_file(snap, "config.json"), snap.revision, tmp_path)


def test_access_denied_without_credentials_asks_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not against moto: with IAM checks on it answers unsigned requests with a 500. A private
    # bucket read anonymously answers AccessDenied; the fix is credentials, not a bucket policy.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    src = S3Source(S3Model(BUCKET, PREFIX), endpoint="http://127.0.0.1:9")
    denied = S3Error(urllib3.HTTPResponse(status=403), "AccessDenied", "Access Denied", f"/{BUCKET}", None, None)
    error = src._error(denied, "listing")
    assert isinstance(error, AuthenticationError)
    assert "no credentials" in str(error) and "AWS_ACCESS_KEY_ID" in str(error)


def test_missing_bucket_is_not_found(s3_env: S3Server) -> None:
    src = S3Source(S3Model("no-such-bucket", "m"), endpoint=s3_env.endpoint)
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket' does not exist") as info:
        src.snapshot()
    assert s3_env.endpoint in str(info.value) and info.value.reason == "NotFound"


def test_empty_prefix_is_not_found(s3_env: S3Server) -> None:
    # "org/tin" is a string prefix of org/tiny/... but not a folder: nothing is under org/tin/.
    for prefix in ("nothing/here", "org/tin"):
        with pytest.raises(NotFoundError, match=f"no objects under s3://{BUCKET}/{prefix} at {s3_env.endpoint}"):
            source(s3_env, prefix).snapshot()


def test_object_deleted_after_listing_is_not_found(s3_env: S3Server, tmp_path: Path) -> None:
    _put(s3_env, "org/deleted/model.safetensors", b"gone soon")
    src = source(s3_env, "org/deleted")
    snap = src.snapshot()
    s3_env.client().remove_object(BUCKET, "org/deleted/model.safetensors")
    with pytest.raises(NotFoundError, match="the object is gone"):
        src.fetch(snap.files[0], snap.revision, tmp_path)


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("http://127.0.0.1:9000", ("127.0.0.1:9000", False)),
    ("https://minio.example.com", ("minio.example.com", True)),
    ("minio.storage.svc:9000", ("minio.storage.svc:9000", True)),
    ("https://s3.amazonaws.com/", ("s3.amazonaws.com", True)),
])
def test_parse_endpoint(endpoint: str, expected: tuple[str, bool]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["ftp://host", "http://host:9000/bucket", "http://"])
def test_parse_endpoint_refuses_what_is_not_a_server(endpoint: str) -> None:
    with pytest.raises(SourceError, match="S3 endpoint"):
        parse_endpoint(endpoint)


def test_endpoint_defaults_to_aws_endpoint_url(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    src = S3Source(S3Model(BUCKET, PREFIX))
    assert src.endpoint == s3_env.endpoint
    assert [f.path for f in src.snapshot().files] == sorted(MODEL)


# --- end to end: the store and `radixserve download` ----------------------------------------


class TamperingS3Source(S3Source):
    """Serves config.json with one byte changed, as a broken proxy or disk would."""

    def fetch(self, file: RemoteFile, revision: str, staging: Path) -> Path:
        path = super().fetch(file, revision, staging)
        if file.path == "config.json":
            path.write_bytes(path.read_bytes().replace(b"llama", b"llamb"))  # same size
        return path


def _object_gets_under(log: list[LoggedRequest], prefix: str) -> list[LoggedRequest]:
    return [r for r in log if r.method == "GET" and r.path.startswith(f"/{BUCKET}/{prefix}/")]


def _listed(log: list[LoggedRequest]) -> bool:
    return any("list-type=2" in r.query for r in log)


def test_store_download_then_a_cache_hit_that_fetches_nothing(s3_env: S3Server, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    logged = len(s3_env.requests())
    first = download(source(s3_env), dest, include=["*"])
    assert not first.cache_hit and first.bytes_downloaded == sum(len(d) for d in MODEL.values())
    for path, data in MODEL.items():
        assert (dest / path).read_bytes() == data
    # werkzeug logs a request when the response headers go out, so these lines are all there.
    log = s3_env.wait_for_requests(lambda log: len(_object_gets_under(log[logged:], PREFIX)) >= len(MODEL))
    assert len(_object_gets_under(log[logged:], PREFIX)) == len(MODEL)
    logged = len(log)

    second = download(source(s3_env), dest, include=["*"])

    assert second.cache_hit and second.bytes_downloaded == 0 and second.revision == first.revision
    log = s3_env.wait_for_requests(lambda log: _listed(log[logged:]))[logged:]
    assert _listed(log) and _object_gets_under(log, PREFIX) == []


def test_store_refuses_a_file_that_fails_its_md5(s3_env: S3Server, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with pytest.raises(ChecksumMismatchError, match=r"config\.json does not match the source: expected md5"):
        download(TamperingS3Source(S3Model(BUCKET, PREFIX), endpoint=s3_env.endpoint), dest, include=["*"])
    assert not dest.exists()
    assert download(source(s3_env), dest, include=["*"]).bytes_downloaded > 0
    assert (dest / "config.json").read_bytes() == MODEL["config.json"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    radixserve = Path(sys.executable).parent / "radixserve"  # the console script of this venv
    return subprocess.run([str(radixserve), "download", *args, "--progress", "json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _done(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    event: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert event["event"] == "done"
    return event


_SLOW_CLI = _SLOW_NETWORK + """
from radixserve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_download_resumes_after_a_kill_then_hits_the_cache(s3_env: S3Server, tmp_path: Path) -> None:
    prefix = BIG_KEY.rsplit("/", 1)[0]
    uri, dest = f"s3://{BUCKET}/{prefix}", tmp_path / "big"
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env.endpoint}  # s3_env set the keys in os.environ
    args = ["download", uri, str(dest), "--include", "*", "--progress", "none"]
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=env, cwd=REPO,
                             stderr=subprocess.DEVNULL)
    staged = tmp_path / "big.partial"
    _kill_after(child, lambda: sum(p.stat().st_size for p in staged.rglob("*.part")), 2 * MiB)
    logged = len(s3_env.requests())

    resumed = _done(_cli(uri, str(dest), "--include", "*", "--s3-endpoint", s3_env.endpoint, env=env))

    assert not resumed["cache_hit"] and 0 < resumed["bytes_downloaded"] <= len(BIG) - 2 * MiB
    assert (dest / "weights.bin").read_bytes() == BIG
    log = s3_env.wait_for_requests(lambda log: bool(_object_gets(log[logged:], BIG_KEY)))[logged:]
    assert [r.status for r in _object_gets(log, BIG_KEY)] == [206]
    logged = len(s3_env.requests())

    again = _done(_cli(uri, str(dest), "--include", "*", "--s3-endpoint", s3_env.endpoint, env=env))

    assert again["cache_hit"] and again["bytes_downloaded"] == 0
    log = s3_env.wait_for_requests(lambda log: _listed(log[logged:]))[logged:]
    assert _object_gets(log, BIG_KEY) == []


def test_cli_reports_forbidden_and_not_found(s3_env: S3Server, tmp_path: Path) -> None:
    env = {**os.environ, **s3_env.denied.env()}
    denied = _cli(f"s3://{BUCKET}/{PREFIX}", str(tmp_path / "a"), "--s3-endpoint", s3_env.endpoint, env=env)
    assert denied.returncode == 1
    assert denied.stderr.strip().splitlines()[-1].startswith("error: Forbidden: listing s3://models/org/tiny")
    missing = _cli(f"s3://{BUCKET}/no/such/model", str(tmp_path / "b"), "--s3-endpoint", s3_env.endpoint,
                   env={**os.environ})
    assert missing.returncode == 1
    assert f"error: NotFound: no objects under s3://{BUCKET}/no/such/model at {s3_env.endpoint}" in missing.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
