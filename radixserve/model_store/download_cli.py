"""`radixserve download URI DEST`: bring a remote model (hf://, s3://) into a local directory.

This is also the operator's init container, so its contract is fixed: exit 0 when DEST holds
the model (downloaded now or a cache hit), 1 when the download failed (stderr says
`error: <Reason>: <message>`; with --termination-log the same `<Reason>: <message>` goes to
that file, which Kubernetes shows as the container's termination message), 2 for usage
errors (bad URI, a reference that is not downloadable, bad flags).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from radixserve.model_store.base import Source, SourceError
from radixserve.model_store.progress import PROGRESS_MODES, make_progress
from radixserve.model_store.uri import (
    HFModel,
    InvalidModelURI,
    LocalModel,
    OCIModel,
    PVCModel,
    S3Model,
    parse_model_uri,
)

logger = logging.getLogger(__name__)

TERMINATION_MESSAGE_MAX = 4096  # Kubernetes keeps at most this many bytes of the message

EPILOG = """\
URIs:
  hf://org/name[@revision]   a Hugging Face Hub repository (branch, tag or commit; default: the main branch)
  s3://bucket[/prefix]       every object under a prefix of an S3-compatible store

What is downloaded by default: the top-level *.safetensors (+ *.safetensors.index.json), config.json,
generation_config.json and tokenizer files; if there are no safetensors, the single *.gguf file.
PyTorch pickles (.bin/.pt/.pth) are never downloaded together with safetensors. --include replaces this
choice (fnmatch patterns on the relative path, e.g. --include '*Q4_K_M.gguf'); --exclude removes files.

The download is resumable (run the same command again after a failure or kill), every file is checked
against the source's size and checksum (sha256, git blob id, MD5 ETag), and DEST appears only complete:
files are staged in DEST.partial/ and renamed into place. DEST.lock makes concurrent downloads into one
DEST wait for each other; the second finds a cache hit. DEST/.radixserve-model.json records the URI, the
revision and each file's size and checksum.

Environment:
  HF_TOKEN                 token for private or gated Hub repositories
  HF_ENDPOINT              Hub endpoint (default https://huggingface.co), overridden by --hf-endpoint
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN   S3 credentials
  AWS_ENDPOINT_URL         S3 endpoint (default AWS), overridden by --s3-endpoint
  AWS_REGION               S3 region, overridden by --s3-region

Exit status: 0 DEST holds the model (downloaded or already there), 1 the download failed,
2 usage error (bad flags, bad URI, or a pvc://, oci:// or local reference, which are not downloaded).

Output: with --progress json, stdout carries one JSON object per line: {"event": "progress", "bytes_done",
"bytes_total", "files_done", "files_total"} at most every 2 s, then {"event": "done", "uri", "revision",
"path", "bytes_total", "bytes_downloaded", "cache_hit", "seconds"}.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radixserve download",
        description="Download a model (hf:// or s3://) into DEST: resumable, checksummed, locked and atomically "
                    "published; a second run that finds the same revision in DEST downloads nothing.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("uri", metavar="URI", help="hf://org/name[@revision] or s3://bucket[/prefix]")
    parser.add_argument("dest", metavar="DEST", type=Path,
                        help="directory to publish the model in (created; its parent must be writable)")
    parser.add_argument("--include", action="append", default=[], metavar="PAT",
                        help="download only files matching this fnmatch pattern (repeatable; replaces the default)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PAT",
                        help="do not download files matching this pattern (repeatable)")
    parser.add_argument("--max-workers", type=int, default=8, metavar="N",
                        help="files downloaded in parallel (default: %(default)s)")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="auto: a bar on a terminal, else log lines on stderr; json: JSON lines on stdout "
                             "(default: %(default)s)")
    parser.add_argument("--hf-endpoint", metavar="URL", help="Hugging Face Hub endpoint (default: $HF_ENDPOINT)")
    parser.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--s3-region", metavar="R", help="S3 region (default: $AWS_REGION)")
    parser.add_argument("--lock-timeout", type=float, default=None, metavar="S",
                        help="seconds to wait for another download into DEST (default: wait as long as it takes)")
    parser.add_argument("--termination-log", type=Path, metavar="PATH",
                        help="on failure, also write '<Reason>: <message>' here (e.g. /dev/termination-log)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level of the messages on stderr (default: %(default)s)")
    return parser


def make_source(uri: HFModel | S3Model, args: argparse.Namespace) -> Source:
    if isinstance(uri, HFModel):
        from radixserve.model_store.hf import HFSource

        return HFSource(uri, endpoint=args.hf_endpoint)
    from radixserve.model_store.s3 import S3Source

    return S3Source(uri, endpoint=args.s3_endpoint, region=args.s3_region)


def _not_downloadable(uri: LocalModel | PVCModel | OCIModel) -> str:
    if isinstance(uri, PVCModel):
        return (f"{uri} is a PersistentVolumeClaim: it is mounted into the pod, not downloaded; "
                "outside Kubernetes pass the path where its files are")
    if isinstance(uri, OCIModel):
        return (f"{uri} is an OCI image: Kubernetes mounts it as an image volume, nothing to download; "
                "outside Kubernetes pull and extract it, then pass the path")
    return f"{uri} is a local path: nothing to download (pass it to --model-path directly)"


def write_termination_log(path: Path, text: str) -> None:
    data = text.encode()[:TERMINATION_MESSAGE_MAX].decode(errors="ignore")
    try:
        path.write_text(data)
    except OSError as e:
        logger.warning("cannot write the termination log %s: %s", path, e)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # one line per HTTP request drowns the progress lines
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    if args.max_workers < 1:
        parser.error("--max-workers must be >= 1")
    try:
        uri = parse_model_uri(args.uri)
    except InvalidModelURI as e:
        parser.error(str(e))
    if not isinstance(uri, HFModel | S3Model):
        print(f"radixserve download: error: {_not_downloadable(uri)}", file=sys.stderr)
        return 2
    from radixserve.model_store.store import download

    try:
        download(make_source(uri, args), args.dest, include=args.include or None, exclude=args.exclude or None,
                 max_workers=args.max_workers, progress=make_progress(args.progress),
                 lock_timeout=args.lock_timeout)
    except KeyboardInterrupt:
        print("error: Interrupted: the download was interrupted; run it again to resume", file=sys.stderr)
        return 1
    except Exception as e:  # every failure must end in the one-line contract, not a traceback
        reason = e.reason if isinstance(e, SourceError) else "DownloadFailed"
        message = str(e) if isinstance(e, SourceError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, SourceError):
            logger.error("unexpected failure", exc_info=True)
        print(f"error: {reason}: {message}", file=sys.stderr)
        if args.termination_log is not None:
            write_termination_log(args.termination_log, f"{reason}: {message}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
