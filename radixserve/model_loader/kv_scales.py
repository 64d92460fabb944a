"""KV-cache scales a checkpoint publishes, for `--kv-cache-dtype fp8_e4m3`.

Names read (per decoder layer N; a scale is a scalar, or one value per KV head, of which the
largest is taken so that no head overflows e4m3):
  model.layers.N.self_attn.k_scale / v_scale              llm-compressor (compressed-tensors kv_cache_scheme)
  model.layers.N.self_attn.kv_scale                       older vLLM checkpoints: one scale for K and V
  model.layers.N.self_attn.{k,v}_proj.output_scale        ModelOpt-style output scales of the K/V projections
They are not weights: `is_kv_scale` lets the weight streams drop them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(k_scale|v_scale|kv_scale|k_proj\.output_scale|"
                   r"v_proj\.output_scale)$")
_K = ("k_scale", "kv_scale", "k_proj.output_scale")
_V = ("v_scale", "kv_scale", "v_proj.output_scale")


def is_kv_scale(name: str) -> bool:
    return _NAME.match(name) is not None


def read_kv_scales(files: Sequence[Path]) -> dict[int, tuple[float, float]]:
    """{global layer index: (k_scale, v_scale)} for the layers whose K and V scales are both present."""
    from safetensors import safe_open

    found: dict[int, dict[str, float]] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                m = _NAME.match(name)
                if m is not None:
                    found.setdefault(int(m[1]), {})[m[2]] = float(f.get_tensor(name).float().abs().max())
    scales: dict[int, tuple[float, float]] = {}
    for layer, named in sorted(found.items()):
        k = next((named[n] for n in _K if n in named), None)
        v = next((named[n] for n in _V if n in named), None)
        if k is None or v is None or not (k > 0 and v > 0):
            logger.warning("layer %d: KV-cache scales %s are incomplete or not positive; not used", layer, named)
            continue
        scales[layer] = (k, v)
    return scales
