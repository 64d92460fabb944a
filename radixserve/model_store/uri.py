"""Model references, as users write them in `--model-path`, `radixserve download` and the CRD.

    hf://org/name[@revision]       a Hugging Face Hub repository (revision: branch, tag or commit)
    s3://bucket[/prefix]           every object under a prefix of an S3-compatible store
    pvc://claim[/path]             a PersistentVolumeClaim (Kubernetes only)
    oci://registry/repo:tag        an OCI image mounted as an image volume (Kubernetes 1.33+)
    /abs/path or file:///abs/path  a path already on disk (inside the server image, in Kubernetes)

Parsing is strict and names what is wrong, because the same text is checked by the
operator (as a status condition) and by the CLI (as an error message).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

# Hugging Face repo ids: "name" or "org/name"; the Hub allows [A-Za-z0-9._-], no "--" or ".." runs.
_HF_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
# S3 bucket names (the strict, DNS-compatible rules every S3-compatible store accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Kubernetes object names (DNS-1123 subdomain).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# An OCI reference: registry/repository with a :tag or @digest (tag-less "latest" is refused:
# a moving tag would make replicas serve different models).
_OCI = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
SCHEMES = ("hf", "s3", "pvc", "oci", "file")


class InvalidModelURI(ValueError):
    """A model reference that does not parse; the message says what is expected."""


@dataclass(frozen=True)
class HFModel:
    repo_id: str
    revision: str | None = None  # None: the repository's default branch

    def __str__(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class S3Model:
    bucket: str
    prefix: str = ""  # no leading or trailing "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


@dataclass(frozen=True)
class PVCModel:
    claim: str
    path: str = ""  # relative path inside the volume

    def __str__(self) -> str:
        return f"pvc://{self.claim}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class OCIModel:
    reference: str  # registry/repository:tag or registry/repository@sha256:...

    def __str__(self) -> str:
        return f"oci://{self.reference}"


@dataclass(frozen=True)
class LocalModel:
    path: str  # absolute, or relative to the working directory outside Kubernetes

    def __str__(self) -> str:
        return self.path


ModelURI = HFModel | S3Model | PVCModel | OCIModel | LocalModel
RemoteModel = HFModel | S3Model  # what `radixserve download` fetches


def _relative(path: str, what: str) -> str:
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidModelURI(f"{what} must not contain '.' or '..' segments, got {path!r}")
    return "/".join(parts)


def _parse_hf(rest: str) -> HFModel:
    repo, _, revision = rest.partition("@")
    parts = repo.split("/")
    if not 1 <= len(parts) <= 2 or not all(_HF_PART.match(p) for p in parts) \
            or any("--" in p or ".." in p for p in parts):
        raise InvalidModelURI(
            f"hf://{rest}: expected hf://org/name[@revision] with a Hugging Face repository id "
            "(letters, digits, '.', '_', '-'), e.g. hf://Qwen/Qwen3-8B@main"
        )
    if "@" in rest and not re.match(r"^[A-Za-z0-9._/-]{1,255}$", revision):
        raise InvalidModelURI(f"hf://{rest}: the revision after '@' must be a branch, tag or commit, got {revision!r}")
    return HFModel(repo, revision or None)


def _parse_s3(rest: str) -> S3Model:
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidModelURI(
            f"s3://{rest}: expected s3://bucket[/prefix] with a bucket name of 3-63 lower-case letters, "
            "digits, '.' and '-'"
        )
    return S3Model(bucket, _relative(prefix, "the S3 prefix"))


def _parse_pvc(rest: str) -> PVCModel:
    claim, _, path = rest.partition("/")
    if not claim or len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
        raise InvalidModelURI(
            f"pvc://{rest}: expected pvc://claim-name[/path] with a PersistentVolumeClaim name "
            "(lower-case letters, digits, '-' and '.')"
        )
    return PVCModel(claim, _relative(path, "the path inside the claim"))


def _parse_oci(rest: str) -> OCIModel:
    match = _OCI.match(rest)
    if match is None or "/" not in rest.split("@")[0]:
        raise InvalidModelURI(
            f"oci://{rest}: expected oci://registry/repository:tag or oci://registry/repository@sha256:<digest>"
        )
    if not match.group("tag") and not match.group("digest"):
        raise InvalidModelURI(
            f"oci://{rest}: name a tag or a digest; an implicit ':latest' can change under running replicas"
        )
    return OCIModel(rest)


def parse_model_uri(text: str) -> ModelURI:
    """Parse a model reference; anything without a scheme is a local path."""
    text = text.strip()
    if not text:
        raise InvalidModelURI("the model reference is empty")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return LocalModel(text)
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidModelURI(f"{text}: file:// URIs take an absolute path, e.g. file:///models/qwen")
        return LocalModel(rest)
    parsers: dict[str, Callable[[str], ModelURI]] = {
        "hf": _parse_hf, "s3": _parse_s3, "pvc": _parse_pvc, "oci": _parse_oci}
    if scheme not in parsers:
        raise InvalidModelURI(f"{text}: unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)} or a path")
    if not rest:
        raise InvalidModelURI(f"{text}: nothing after {scheme}://")
    return parsers[scheme](rest)


def is_remote(uri: ModelURI) -> bool:
    """True for sources that are downloaded before serving (hf://, s3://)."""
    return isinstance(uri, HFModel | S3Model)


def cache_key(uri: ModelURI) -> str:
    """A directory name for this reference in a model cache: readable, filesystem-safe and unique.

    The readable part may collide after sanitising (and is cut to 80 characters); the hash of
    the full reference keeps distinct references apart.
    """
    text = str(uri)
    scheme = text.split("://", 1)[0] if "://" in text else "file"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", text.split("://", 1)[-1]).strip("-.")[:80]
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{scheme}--{readable}-{digest}"


def label_key_suffix(uri: ModelURI) -> str:
    """The name part of a node label saying "this node's cache holds `uri`" (at most 63 characters)."""
    return "m-" + hashlib.sha256(str(uri).encode()).hexdigest()[:20]
