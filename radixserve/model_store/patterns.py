"""Which of a model's files to download.

A Hub repository often holds the same weights several times (`*.safetensors`,
`pytorch_model*.bin`, `original/consolidated.pth`, a dozen GGUF quantizations); downloading
all of them wastes hours and disk. By default only what radixserve loads is taken: the
top-level safetensors with their config and tokenizer files, or else a single GGUF file.
User patterns (fnmatch, matched against the relative path) replace that default.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

from radixserve.model_store.base import RemoteFile, SourceError

logger = logging.getLogger(__name__)

# Small files a model directory needs besides its weights.
SUPPORT_FILES = frozenset({
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
})
TORCH_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")


class SelectionError(SourceError):
    """The listing has nothing radixserve can load, or the choice among several files is ambiguous."""

    reason = "NoLoadableWeights"


def _top_level(files: Sequence[RemoteFile]) -> list[RemoteFile]:
    return [f for f in files if "/" not in f.path]


def _is_safetensors(path: str) -> bool:
    return path.endswith(".safetensors") or path.endswith(".safetensors.index.json")


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def default_selection(files: Sequence[RemoteFile], uri: str) -> list[RemoteFile]:
    """Top-level safetensors + support files; else exactly one GGUF (+ support files); else an error."""
    top = _top_level(files)
    support = [f for f in top if f.path in SUPPORT_FILES]
    safetensors = [f for f in top if _is_safetensors(f.path)]
    if any(f.path.endswith(".safetensors") for f in safetensors):
        return support + safetensors
    ggufs = [f for f in top if f.path.lower().endswith(".gguf")]
    if len(ggufs) == 1:
        return support + ggufs
    if ggufs:
        names = ", ".join(f.path for f in ggufs)
        raise SelectionError(
            f"{uri} holds {len(ggufs)} GGUF files ({names}); choose one with --include, "
            f"e.g. --include '{ggufs[0].path}'"
        )
    if any(f.path.endswith(TORCH_WEIGHT_SUFFIXES) for f in files):
        raise SelectionError(
            f"{uri} has only PyTorch pickle weights (.bin/.pt/.pth); radixserve loads safetensors or GGUF. "
            "Use a repository or revision that has *.safetensors (e.g. convert it with transformers' "
            "save_pretrained(safe_serialization=True)), or pass --include to take files explicitly"
        )
    raise SelectionError(
        f"{uri} has no model weights radixserve can load (top-level *.safetensors or *.gguf); "
        f"it lists {len(files)} files"
    )


def select_files(files: Sequence[RemoteFile], uri: str, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None) -> list[RemoteFile]:
    """The files to download, in listing order.

    `include` replaces the default choice (any depth, any kind of file); `exclude` then removes
    files from whichever choice was made. An empty result is an error: a download that fetches
    nothing would publish an empty model directory.
    """
    if include:
        chosen = [f for f in files if _matches(f.path, include)]
    else:
        chosen = default_selection(files, uri)
    if exclude:
        chosen = [f for f in chosen if not _matches(f.path, exclude)]
    if not chosen:
        raise SelectionError(
            f"no file of {uri} matches include={list(include or [])} exclude={list(exclude or [])}; "
            f"it lists: {', '.join(f.path for f in files[:20])}{' ...' if len(files) > 20 else ''}"
        )
    if any(f.path.endswith(".safetensors") for f in chosen):
        # The same weights twice (safetensors and pickles) double the download for nothing, and
        # radixserve reads only the safetensors; a broad --include ('*') must not pull both.
        pickles = [f.path for f in chosen if f.path.endswith(TORCH_WEIGHT_SUFFIXES)]
        if pickles:
            logger.warning("%s: skipping %d PyTorch pickle files (%s) because safetensors are selected",
                           uri, len(pickles), ", ".join(pickles[:5]))
            chosen = [f for f in chosen if not f.path.endswith(TORCH_WEIGHT_SUFFIXES)]
    return chosen
