"""hf://org/name[@revision]: a Hugging Face Hub repository as a `Source`, through huggingface_hub.

snapshot: `HfApi.model_info(files_metadata=True)` gives the commit sha (the revision every
file is then fetched at, so a branch moving mid-download cannot mix commits) and, per file,
its size and checksum: the LFS sha256 for large files, the git blob id for the rest.

fetch: huggingface_hub's `http_get` on the file's /resolve URL at that commit, appending to
`<file>.incomplete` in the staging directory. `hf_hub_download` is not used because since
huggingface_hub 1.x it writes to a process-unique temporary file that it deletes on
failure, so a killed download restarts from zero; `http_get` takes a `resume_size` (an HTTP
Range request) and works for every endpoint that serves /resolve. The Hub's Xet storage is
never needed: /resolve redirects Xet-backed files to a plain HTTP bridge.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers
from tqdm import tqdm

from radixserve.model_store.base import (
    AccessDeniedError,
    AuthenticationError,
    Checksum,
    NotFoundError,
    RemoteFile,
    Snapshot,
    SourceError,
)
from radixserve.model_store.uri import HFModel

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
INCOMPLETE_SUFFIX = ".incomplete"
_TOKEN_HINT = "set HF_TOKEN (or the InferenceServer's credentialsSecretRef) to a token that can read it"


class _QuietBar(tqdm):
    """huggingface_hub draws a bar per file; the store draws one for the whole model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class HFSource:
    """One Hub repository. `endpoint` defaults to $HF_ENDPOINT, then huggingface.co; `token` to
    $HF_TOKEN, then the token saved by `hf auth login` (huggingface_hub's own lookup)."""

    def __init__(self, uri: HFModel, *, endpoint: str | None = None, token: str | None = None) -> None:
        self.uri = uri
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token or os.environ.get("HF_TOKEN") or None

    def describe(self) -> str:
        return str(self.uri)

    def snapshot(self) -> Snapshot:
        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.uri.repo_id, revision=self.uri.revision, files_metadata=True)
        except (HfHubHTTPError, httpx2.TransportError) as e:
            raise self._error(e) from e
        if not info.sha:
            raise SourceError(f"{self.describe()}: {self.endpoint} returned no commit sha for the repository")
        files: list[RemoteFile] = []
        for sibling in info.siblings or []:
            if sibling.lfs is not None:
                files.append(RemoteFile(sibling.rfilename, sibling.lfs.size, Checksum("sha256", sibling.lfs.sha256)))
            elif sibling.size is not None:
                checksum = Checksum("git-sha1", sibling.blob_id) if sibling.blob_id else None
                files.append(RemoteFile(sibling.rfilename, sibling.size, checksum))
            else:
                raise SourceError(f"{self.describe()}: {self.endpoint} lists {sibling.rfilename} without a size; "
                                  "it does not look like a Hugging Face Hub API")
        logger.info("%s is commit %s (%d files)", self.describe(), info.sha, len(files))
        return Snapshot(info.sha, files)

    def fetch(self, file: RemoteFile, revision: str, staging: Path) -> Path:
        target = staging / file.path
        if target.is_file() and target.stat().st_size == file.size:
            return target  # finished by an earlier run; the store verifies it
        partial = target.with_name(target.name + INCOMPLETE_SUFFIX)
        partial.parent.mkdir(parents=True, exist_ok=True)
        resume = partial.stat().st_size if partial.exists() else 0
        if resume > file.size:  # not a prefix of this file: start over
            partial.unlink()
            resume = 0
        if resume:
            logger.info("%s: resuming %s at byte %d of %d", self.describe(), file.path, resume, file.size)
        url = hf_hub_url(self.uri.repo_id, file.path, revision=revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        # Range offsets must be offsets in the file itself, not in a gzip-encoded body.
        headers["Accept-Encoding"] = "identity"
        try:
            # Unbuffered: each piece http_get hands over (DOWNLOAD_CHUNK_SIZE, 10 MiB) is on disk
            # at once, so a killed process loses at most the piece in flight.
            with open(partial, "ab", buffering=0) as out:
                http_get(url, out, resume_size=resume, headers=headers, expected_size=file.size,
                         displayed_filename=file.path, tqdm_class=_QuietBar)
        except (HfHubHTTPError, httpx2.TransportError) as e:
            raise self._error(e, file.path) from e
        except OSError as e:
            if e.errno is not None:
                raise  # ENOSPC and friends: the store maps them
            # http_get's "Consistency check failed": the body ended early or ran long.
            raise SourceError(f"{self.describe()}: {file.path}: {e}".splitlines()[0]
                              + "; the data received so far is kept: run again to resume") from e
        os.replace(partial, target)
        return target

    def _error(self, e: Exception, path: str | None = None) -> SourceError:
        """huggingface_hub's exception as a base.py error whose message says what to do."""
        uri = self.describe()
        if isinstance(e, httpx2.ConnectError | httpx2.ConnectTimeout):
            return SourceError(f"cannot reach {self.endpoint} for {uri}: {e}; check the network, proxy settings "
                               "and HF_ENDPOINT")
        if isinstance(e, httpx2.TransportError):
            return SourceError(f"the connection to {self.endpoint} failed while downloading {uri}"
                               f"{f' ({path})' if path else ''}: {e}; the data received so far is kept: "
                               "run again to resume")
        status = e.response.status_code if isinstance(e, HfHubHTTPError) and e.response is not None else None
        if status == 401:
            sent = "the token was refused" if build_hf_headers(token=self.token).get("authorization") \
                else "no token was sent"
            return AuthenticationError(f"401 Unauthorized for {uri} ({sent}; the repository may also be "
                                       f"private or gated): {_TOKEN_HINT}")
        if isinstance(e, GatedRepoError) or status == 403:
            return AccessDeniedError(
                f"403 Forbidden for {uri}: the token may not read it (a gated repository: accept its terms on "
                f"the Hub with the token's account; or a fine-grained token without read access): {_TOKEN_HINT}")
        if isinstance(e, RevisionNotFoundError):
            return NotFoundError(f"404 Not Found for {uri}: the repository has no revision "
                                 f"{self.uri.revision!r}; name an existing branch, tag or commit after '@'")
        if isinstance(e, RemoteEntryNotFoundError):
            return NotFoundError(f"404 Not Found for {uri}: the file {path!r} is listed but cannot be fetched; "
                                 "run again (the repository may have changed meanwhile)")
        if isinstance(e, RepositoryNotFoundError) or status == 404:
            return NotFoundError(f"404 Not Found for {uri}: no such repository on {self.endpoint} (or a private "
                                 f"one the token cannot see); check the name, or {_TOKEN_HINT}")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return SourceError(f"HTTP {status} from {self.endpoint} for {uri}"
                           f"{f' ({path})' if path else ''}: {first}")
