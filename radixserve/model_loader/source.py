"""Resolve `--model-path` / `--load-format` into a ModelSource: config, weights and tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig, UnsupportedModelError
from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import Fp8Weight
from radixserve.model_loader.default_model import DEFAULT_MODEL_NAME, ModelNotFoundError, default_model_path
from radixserve.model_loader.fp8_checkpoint import Fp8Scheme, checkpoint_scheme, iter_fp8_checkpoint
from radixserve.model_loader.generation_config import gguf_generation_defaults, hf_generation_defaults
from radixserve.model_loader.gguf_loader import gguf_model_config, iter_gguf_weights, open_gguf
from radixserve.model_loader.hf_loader import hf_model_config, iter_safetensors_weights, safetensors_files
from radixserve.model_loader.kv_scales import is_kv_scale, read_kv_scales

EXPECTED = (
    "expected a GGUF file, an HF directory with config.json and *.safetensors, "
    "or no model path for the embedded default"
)


@dataclass
class ModelSource:
    kind: str  # "gguf" | "safetensors" | "dummy"
    path: Path | None
    name: str
    config: ModelConfig
    tokenizer_source: Path
    _gguf_reader: Any = None
    # Sampling defaults for fields a request leaves unset (generation_config.py).
    generation_defaults: dict[str, float | int] = field(default_factory=dict)
    # An FP8 checkpoint's scheme (its config.json's quantization_config); None: float weights.
    fp8: Fp8Scheme | None = None

    def iter_weights(self, pack_quantized: bool = False
                     ) -> Iterator[tuple[str, torch.Tensor | GroupQuantized | Fp8Weight]]:
        """(name, tensor) pairs; with `pack_quantized`, GGUF's packable linear weights come as GroupQuantized
        and an FP8 checkpoint's weights as Fp8Weight (without, FP8 weights are dequantized here)."""
        if self.kind == "gguf":
            return iter_gguf_weights(self._gguf_reader, self.config, pack=pack_quantized)
        if self.kind == "safetensors":
            assert self.path is not None
            if self.fp8 is not None:
                stream = iter_fp8_checkpoint(self.path, safetensors_files(self.path), self.fp8)
                return stream if pack_quantized else _dequantized(stream)
            # KV-cache scales are not weights: kv_cache_scales() reads them.
            return ((n, t) for n, t in iter_safetensors_weights(self.path) if not is_kv_scale(n))
        raise ValueError("dummy models have no weights to read")

    def kv_cache_scales(self) -> dict[int, tuple[float, float]]:
        """{layer: (k_scale, v_scale)} the checkpoint publishes for an FP8 KV cache (kv_scales.py)."""
        if self.kind != "safetensors" or self.path is None:
            return {}
        return read_kv_scales(safetensors_files(self.path))

    @property
    def num_weight_files(self) -> int:
        if self.kind == "gguf":
            return len(self._gguf_reader.tensors)
        return 0


def _fp8_scheme(path: Path) -> Fp8Scheme | None:
    try:
        return checkpoint_scheme(path)
    except UnsupportedQuantizationError as e:
        raise UnsupportedModelError(f"{str(path / 'config.json')!r}: {e}") from e


def _dequantized(stream: Iterator[tuple[str, torch.Tensor | Fp8Weight]]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in stream:
        yield name, tensor.dequantize() if isinstance(tensor, Fp8Weight) else tensor


def _resolve_real(path: Path) -> tuple[str, Path]:
    if not path.exists():
        raise ModelNotFoundError(f"model path {str(path)!r} does not exist; {EXPECTED}")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf", path
        raise UnsupportedModelError(f"model file {str(path)!r} is not a .gguf file; {EXPECTED}")
    ggufs = sorted(path.glob("*.gguf"))
    # A downloaded GGUF repository may carry config.json and tokenizer files next to its one GGUF.
    if len(ggufs) == 1 and not any(path.glob("*.safetensors")):
        return "gguf", ggufs[0]
    if (path / "config.json").is_file():
        safetensors_files(path)
        return "safetensors", path
    raise UnsupportedModelError(f"directory {str(path)!r} has no config.json; {EXPECTED}")


def resolve_model_source(
    model_path: str | None, load_format: str = "auto", tokenizer_path: str | None = None
) -> ModelSource:
    if load_format == "dummy":
        return _resolve_dummy(model_path, tokenizer_path)
    path = default_model_path() if not model_path else Path(model_path).expanduser()
    kind, path = _resolve_real(path)
    if load_format not in ("auto", kind):
        raise UnsupportedModelError(f"--load-format {load_format} does not match {str(path)!r}, which is {kind}")
    name = DEFAULT_MODEL_NAME if not model_path else (path.stem if kind == "gguf" else path.name)
    tok = Path(tokenizer_path).expanduser() if tokenizer_path else path
    if kind == "gguf":
        reader = open_gguf(path)
        return ModelSource(kind, path, name, gguf_model_config(reader, path), tok, reader,
                           gguf_generation_defaults(reader, embedded=not model_path))
    return ModelSource(kind, path, name, hf_model_config(path), tok, generation_defaults=hf_generation_defaults(path),
                       fp8=_fp8_scheme(path))


def _resolve_dummy(model_path: str | None, tokenizer_path: str | None) -> ModelSource:
    default_tok = Path(tokenizer_path).expanduser() if tokenizer_path else default_model_path()
    if not model_path or model_path in NAMED_SHAPES:
        shape = model_path or "smollm2-135m"
        config = ModelConfig.from_hf_dict(NAMED_SHAPES[shape], source=f"shape {shape}")
        return ModelSource("dummy", None, f"dummy-{shape}", config, default_tok)
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"--load-format dummy: {model_path!r} is neither a named shape ({sorted(NAMED_SHAPES)}) "
            "nor an existing model path"
        )
    kind, path = _resolve_real(path)
    if kind == "gguf":
        reader = open_gguf(path)
        config = gguf_model_config(reader, path)
    else:
        config = hf_model_config(path)
    tok = Path(tokenizer_path).expanduser() if tokenizer_path else path
    return ModelSource("dummy", path, f"dummy-{path.stem}", config, tok)
