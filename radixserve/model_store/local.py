"""`--model-path hf://...` outside Kubernetes: download into the local model cache, serve from there.

Called once, in the main process, before any scheduler process starts (`radixserve serve`,
`Engine(model_path=...)`), so the children only ever see a local path. In Kubernetes the
operator's init container (`radixserve download`) has already put the model on disk and the
server gets a path; the same store and cache layout serve both.

Cache layout: $RADIXSERVE_MODEL_CACHE (default ~/.cache/radixserve/models)/<cache_key(uri)>/,
next to it <key>.partial/ (an unfinished download) and <key>.lock.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from radixserve.model_store.base import Source
from radixserve.model_store.uri import (
    HFModel,
    InvalidModelURI,
    OCIModel,
    PVCModel,
    S3Model,
    cache_key,
    parse_model_uri,
)

logger = logging.getLogger(__name__)

CACHE_ENV = "RADIXSERVE_MODEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/radixserve/models")


class ModelPathError(ValueError):
    """--model-path names something that cannot be served from this machine."""


def model_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _source(uri: HFModel | S3Model) -> Source:
    if isinstance(uri, HFModel):
        from radixserve.model_store.hf import HFSource

        return HFSource(uri)
    from radixserve.model_store.s3 import S3Source

    return S3Source(uri)


def served_name(uri: HFModel | S3Model) -> str:
    """The model name clients use by default: the repository id, or the S3 prefix's last part."""
    if isinstance(uri, HFModel):
        return uri.repo_id
    return uri.prefix.rsplit("/", 1)[-1] if uri.prefix else uri.bucket


def materialize_model_path(model_path: str | None, progress: str = "auto") -> tuple[str | None, str | None]:
    """(a local path to load, the default served model name or None).

    Local paths (and None, the embedded model) come back unchanged with no name. hf:// and
    s3:// are downloaded into the cache first (a cache hit costs one metadata request). Raises
    ModelPathError for references that cannot be served here, SourceError when the download fails.
    """
    if not model_path or "://" not in model_path:
        return model_path, None
    try:
        uri = parse_model_uri(model_path)
    except InvalidModelURI as e:
        raise ModelPathError(str(e)) from None
    if isinstance(uri, PVCModel | OCIModel):
        raise ModelPathError(f"{uri}: pvc:// and oci:// models are mounted by the radixserve operator in "
                             "Kubernetes; here, pass the local path of the model's files")
    if not isinstance(uri, HFModel | S3Model):
        return uri.path, None  # file:///abs/path
    from radixserve.model_store.progress import make_progress
    from radixserve.model_store.store import download

    dest = model_cache_dir() / cache_key(uri)
    result = download(_source(uri), dest, progress=make_progress(progress))
    logger.info("serving %s (revision %s) from %s", uri, result.revision, dest)
    return str(dest), served_name(uri)

