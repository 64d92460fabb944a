"""Tokenizers through transformers: from an HF directory, or built from a GGUF file's metadata.

Converting a GGUF vocabulary takes seconds, so the converted tokenizer is saved once under
the cache directory (keyed by the file's path, size and mtime) and loaded from there after.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("RADIXSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "radixserve"
    )
    return Path(root)


def _gguf_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def load_tokenizer(source: Path) -> Any:
    from transformers import AutoTokenizer

    if source.is_dir():
        return AutoTokenizer.from_pretrained(str(source))
    cached = cache_dir() / "tokenizers" / _gguf_key(source)
    if (cached / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception as e:  # a damaged cache entry: rebuild it below
            logger.warning("tokenizer cache %s unreadable (%s); rebuilding", cached, e)
    logger.info("building tokenizer from GGUF metadata of %s (once; cached in %s)", source, cached)
    tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    try:
        tok.save_pretrained(str(tmp))
        if cached.exists():  # another process won the race; keep its copy
            shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    except OSError as e:
        logger.warning("could not cache tokenizer in %s: %s", cached, e)
        shutil.rmtree(tmp, ignore_errors=True)
    return tok
