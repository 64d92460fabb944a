"""Tokenizers through transformers: from an HF directory, or built from a GGUF file's metadata.

Converting a GGUF vocabulary takes seconds, so the converted tokenizer is saved once under
the cache directory (keyed by the file's path, size and mtime) and loaded from there after.

A directory whose tokenizer_config.json names its class is loaded through that class, as
AutoTokenizer would pick it, but without AutoTokenizer: AutoTokenizer imports transformers'
configuration module, which imports torch (about a second and 300 MB). The router only
tokenizes, and importing torch while it relays requests held its event loop for seconds.
"""

from __future__ import annotations

import hashlib
import json
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


# Class names AutoTokenizer maps straight to the generic tokenizers-backed class. For a model's
# own class (LlamaTokenizer, ...) it may pick another one from tokenizer.json (a ByteLevel
# LlamaTokenizer loads as TokenizersBackend), so those go through AutoTokenizer itself.
_GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def generic_tokenizer_class(directory: Path) -> Any:
    """The generic tokenizer class when `tokenizer_config.json` names it (GGUF conversions, Llama 3,
    ...) and asks for no remote code; None where AutoTokenizer has to decide."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") not in _GENERIC_CLASSES or "auto_map" in config:
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast


def _from_dir(directory: Path) -> Any:
    cls = generic_tokenizer_class(directory)
    if cls is not None:
        return cls.from_pretrained(str(directory))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def load_tokenizer(source: Path) -> Any:
    if source.is_dir():
        return _from_dir(source)
    cached = cache_dir() / "tokenizers" / _gguf_key(source)
    if (cached / "tokenizer_config.json").is_file():
        try:
            return _from_dir(cached)
        except Exception as e:  # a damaged cache entry: rebuild it below
            logger.warning("tokenizer cache %s unreadable (%s); rebuilding", cached, e)
    logger.info("building tokenizer from GGUF metadata of %s (once; cached in %s)", source, cached)
    from transformers import AutoTokenizer

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
