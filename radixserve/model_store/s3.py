"""s3://bucket/prefix: every object under a prefix of an S3-compatible store (AWS S3, MinIO, Ceph, R2...).

Credentials come from the standard variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(/ AWS_SESSION_TOKEN); in Kubernetes the operator sets them from the Secret named by the
InferenceServer's credentialsSecretRef. Without them, the pod's AWS role is used if the
environment names one (EKS IRSA: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN; EKS Pod Identity
and ECS: AWS_CONTAINER_CREDENTIALS_*), else requests go unsigned (public buckets). The endpoint
is `endpoint`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS S3 itself.

The listing gives each object's size and ETag: a single-part upload's ETag is the md5 of
the content, a multipart upload's is "<md5 of the part md5s>-<parts>" (see `checksums`),
except for objects encrypted with SSE-KMS (found with a HEAD each), whose sizes only are checked.
Downloads resume: bytes received so far live in `staging/.s3-partial/` and a later fetch asks
for the rest with a Range request, pinned to the listed ETag with If-Match so that the
two halves of a file cannot come from two different versions of the object.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.credentials.providers import IamAwsProvider, Provider, StaticProvider
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from .base import (
    AccessDeniedError,
    AuthenticationError,
    Checksum,
    DiskFullError,
    NotFoundError,
    RemoteFile,
    Snapshot,
    SourceError,
)
from .checksums import parse_multipart_etag
from .uri import S3Model

log = logging.getLogger(__name__)

AWS_ENDPOINT = "https://s3.amazonaws.com"
PARTIAL_DIR = ".s3-partial"  # under the staging directory: bytes of interrupted fetches
_CHUNK = 1024 * 1024
# A stream cut mid-body (connection reset, read timeout) is resumed this many times within one
# fetch; minio's own retries cover only failures before the response starts.
_STREAM_ATTEMPTS = 3
_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
    "credentials); in Kubernetes, point the InferenceServer's credentialsSecretRef at a Secret with those keys"
)
_AUTH_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "InvalidSecurity", "MissingSecurityHeader", "Unauthorized",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden"}


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """("host[:port]", secure) from "http://host:port", "https://host" or a bare "host[:port]" (https)."""
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"S3 endpoint {endpoint!r}: expected http(s)://host[:port], e.g. http://minio:9000")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise SourceError(
            f"S3 endpoint {endpoint!r}: the endpoint is the server only; put the bucket and prefix in "
            "the s3:// URI"
        )
    return parts.netloc, parts.scheme == "https"


def _credentials() -> tuple[Provider | None, str]:
    """The credential provider from the environment, and a few words on where it came from."""
    key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if key or secret:
        if not (key and secret):
            missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
            raise AuthenticationError(f"{missing} is not set; {_CREDENTIALS_HINT}")
        return StaticProvider(key, secret, os.environ.get("AWS_SESSION_TOKEN") or None), "AWS_ACCESS_KEY_ID"
    if (os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") and os.environ.get("AWS_ROLE_ARN")) or \
            os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or \
            os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        # EKS IRSA or Pod Identity, ECS task roles. Only then: IamAwsProvider otherwise falls back
        # to the EC2 metadata service, which outside EC2 means a long wait for a timeout.
        return IamAwsProvider(), "the pod's AWS role (web identity / container credentials)"
    return None, "no credentials (anonymous requests)"


def partial_paths(staging: Path, path: str) -> tuple[Path, Path]:
    """Where the bytes received so far of `path` lie, and the file naming the ETag they belong to."""
    # Flat, hashed names: a model's own file can never collide with them.
    name = hashlib.sha256(path.encode()).hexdigest()[:32]
    return staging / PARTIAL_DIR / f"{name}.part", staging / PARTIAL_DIR / f"{name}.etag"


def checksum_from_etag(etag: str) -> Checksum | None:
    """What a listed ETag says about the content: md5 (single part), s3-multipart, or nothing."""
    value = etag.strip('"').lower()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return Checksum("md5", value)
    if parse_multipart_etag(value) is not None:
        return Checksum("s3-multipart", value)
    return None  # some S3-compatible stores use other ETag formats: only the size is checked


class S3Source:
    """The objects under s3://bucket/prefix, one file each (path relative to the prefix)."""

    def __init__(
        self,
        uri: S3Model,
        endpoint: str | None = None,
        region: str | None = None,
        *,
        http_client: urllib3.PoolManager | None = None,  # tests: to see the requests sent
    ) -> None:
        self.uri = uri
        self.endpoint = (
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or AWS_ENDPOINT
        )
        host, secure = parse_endpoint(self.endpoint)
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        self._provider, self._credential_source = _credentials()
        # Minio clients are thread-safe; one is shared by the store's fetch threads.
        self._client = Minio(
            host, secure=secure, region=self.region, credentials=self._provider, http_client=http_client
        )
        self._key_prefix = f"{uri.prefix}/" if uri.prefix else ""
        self._etags: dict[str, str] = {}  # path -> ETag, from the last snapshot
        # Guards creating and removing PARTIAL_DIR, which fetch threads share.
        self._partial_lock = threading.Lock()

    def describe(self) -> str:
        return str(self.uri)

    def _where(self) -> str:
        return f"{self.uri} at {self.endpoint}"

    # --- listing ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        files: list[RemoteFile] = []
        etags: dict[str, str] = {}
        listing: list[tuple[str, int, str]] = []
        try:
            for obj in self._client.list_objects(self.uri.bucket, prefix=self._key_prefix, recursive=True):
                key = obj.object_name or ""
                if obj.is_dir or key.endswith("/"):
                    continue  # "folder" markers some consoles create: no content
                path = self._relative_path(key)
                size, etag = int(obj.size or 0), (obj.etag or "").strip('"')
                listing.append((key, size, etag))
                etags[path] = etag
                files.append(RemoteFile(path, size, checksum_from_etag(etag)))
        except (MinioException, urllib3.exceptions.HTTPError) as exc:
            raise self._error(exc, f"listing {self._where()}") from exc
        if not files:
            raise NotFoundError(
                f"no objects under {self._where()}; check the bucket and prefix "
                "(the prefix is a folder: s3://bucket/models/qwen lists models/qwen/...)"
            )
        encrypted = self._kms_encrypted([key for key, _, _ in listing])
        if encrypted:
            # With SSE-KMS, S3's ETag is not an md5 of the content: claiming one would make every
            # download of such an object fail its checksum.
            log.info("%s: %d objects are encrypted with SSE-KMS, whose ETags are not content digests; "
                     "checking their sizes only", self._where(), len(encrypted))
            files = [RemoteFile(f.path, f.size, None) if self._key_prefix + f.path in encrypted else f
                     for f in files]
        digest = hashlib.sha256()
        for key, size, etag in sorted(listing):
            digest.update(f"{key}\0{size}\0{etag}\n".encode())
        self._etags = etags
        files.sort(key=lambda f: f.path)
        return Snapshot(revision=digest.hexdigest(), files=files)

    def _kms_encrypted(self, keys: list[str]) -> set[str]:
        """The keys stored with SSE-KMS (one HEAD each: the listing does not say)."""

        def head(key: str) -> str | None:
            try:
                stat = self._client.stat_object(self.uri.bucket, key)
            except (MinioException, urllib3.exceptions.HTTPError) as exc:
                raise self._error(exc, f"reading {self._url(key)}") from exc
            sse = str((stat.metadata or {}).get("x-amz-server-side-encryption") or "")  # HEAD's headers
            return key if sse.lower().startswith("aws:kms") else None

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(keys))), thread_name_prefix="s3-head") as pool:
            return {key for key in pool.map(head, keys) if key is not None}

    def _relative_path(self, key: str) -> str:
        path = key[len(self._key_prefix):]
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            # Keys are arbitrary strings; one like "a/../../x" must not become a path outside the model.
            raise SourceError(f"s3://{self.uri.bucket}/{key}: this object key cannot be used as a file path")
        return path

    # --- fetching --------------------------------------------------------------------------

    def fetch(self, file: RemoteFile, revision: str, staging: Path) -> Path:
        target = staging / file.path
        if target.is_file() and target.stat().st_size == file.size:
            return target  # an earlier fetch finished; the store verifies it
        key = self._key_prefix + file.path
        etag = self._etag_of(file, key)
        part, tag = partial_paths(staging, file.path)
        partial_dir = part.parent
        with self._partial_lock:
            partial_dir.mkdir(parents=True, exist_ok=True)
            # Bytes of another version of the object (it changed since they were written) are dropped.
            if not tag.is_file() or tag.read_text() != etag:
                part.unlink(missing_ok=True)
                tag.write_text(etag)
        try:
            for attempt in range(1, _STREAM_ATTEMPTS + 1):
                try:
                    self._download_rest(key, etag, part, file.size)
                except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError) as exc:
                    if attempt == _STREAM_ATTEMPTS:
                        raise SourceError(
                            f"{self._url(key)}: the connection broke {attempt} times ({exc}); "
                            "run the download again to continue"
                        ) from exc
                    log.warning("%s: connection broke (%s); continuing from the bytes received", key, exc)
                    continue
                if part.stat().st_size == file.size:
                    break
            else:
                raise SourceError(
                    f"{self._url(key)}: got {part.stat().st_size} of {file.size} bytes; the object may have "
                    "changed on the server, run the download again"
                )
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                free = shutil.disk_usage(staging).free
                have = part.stat().st_size if part.exists() else 0
                raise DiskFullError(
                    f"no space left on the device of {staging} while fetching {file.path}: "
                    f"{file.size - have} more bytes needed, {free} free"
                ) from exc
            raise
        except (MinioException, urllib3.exceptions.HTTPError) as exc:
            raise self._error(exc, f"downloading {self._url(key)}") from exc
        with self._partial_lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            tag.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # removed only once empty: other fetches may be running
                partial_dir.rmdir()
        return target

    def _etag_of(self, file: RemoteFile, key: str) -> str:
        if file.checksum is not None and file.checksum.kind in ("md5", "s3-multipart"):
            return file.checksum.value
        if file.path in self._etags:
            return self._etags[file.path]
        try:  # a fetch without a snapshot in this process
            stat = self._client.stat_object(self.uri.bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError) as exc:
            raise self._error(exc, f"reading {self._url(key)}") from exc
        return (stat.etag or "").strip('"')

    def _download_rest(self, key: str, etag: str, part: Path, size: int) -> None:
        """Append the bytes of `key` after those already in `part`."""
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        if offset == size and size > 0:
            return
        # If-Match: a Range continuing bytes of an older version would splice two objects.
        headers: dict[str, str | list[str] | tuple[str]] = {"If-Match": f'"{etag}"'} if etag else {}
        response = self._client.get_object(self.uri.bucket, key, offset=offset, request_headers=headers)
        try:
            if offset and response.status != 206:
                # The server ignored the Range and sends the whole object: start over.
                log.info("%s: the server does not serve byte ranges; downloading it whole", key)
                offset = 0
            with part.open("ab" if offset else "wb") as out:
                for chunk in response.stream(_CHUNK):
                    out.write(chunk)
        finally:
            response.close()
            response.release_conn()

    def _url(self, key: str) -> str:
        return f"s3://{self.uri.bucket}/{key}"

    # --- errors ----------------------------------------------------------------------------

    def _error(self, exc: Exception, doing: str) -> SourceError:
        """A SourceError whose message says what failed and what to do about it."""
        if isinstance(exc, S3Error):
            code, detail = exc.code or "", exc.message or ""
            said = f"{code}: {detail}" if detail else code
            if code == "NoSuchBucket":
                return NotFoundError(f"no objects under {self._where()}: bucket {self.uri.bucket!r} does not exist")
            if code == "NoSuchKey":
                return NotFoundError(f"{doing}: the object is gone (deleted since it was listed?)")
            if code in _AUTH_CODES or (code in _DENIED_CODES and self._provider is None):
                return AuthenticationError(
                    f"{doing}: the server did not accept the credentials ({said}); using "
                    f"{self._credential_source}: {_CREDENTIALS_HINT}"
                )
            if code in _DENIED_CODES:
                return AccessDeniedError(
                    f"{doing}: access denied ({said}); the credentials from {self._credential_source} "
                    f"are valid but may not read this model: the bucket policy or IAM policy must allow "
                    f"s3:ListBucket on {self.uri.bucket} and s3:GetObject on {self.uri}/*"
                )
            if code == "PreconditionFailed":
                return SourceError(
                    f"{doing}: the object changed on the server after it was listed; run the download again"
                )
            if code in ("AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"):
                return SourceError(f"{doing}: {said}; set the bucket's region (--s3-region or AWS_REGION)")
            return SourceError(f"{doing}: {said}")
        if isinstance(exc, ServerError):
            return SourceError(f"{doing}: the server failed (HTTP {exc.status_code}); try again later")
        if isinstance(exc, InvalidResponseError):
            return SourceError(f"{doing}: not an S3 response ({exc}); is {self.endpoint} an S3 endpoint?")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return SourceError(f"{doing}: cannot reach {self.endpoint} ({exc})")
        return SourceError(f"{doing}: {exc}")
