"""The sampling defaults a model ships with: what a request gets for the fields it leaves unset.

As vLLM (`--generation-config auto`) and SGLang (`--sampling-defaults model`) do, the defaults
come from the model: an HF directory's generation_config.json, or a GGUF file's
`general.sampling.*` metadata (llama.cpp's keys). The embedded SmolLM2-135M-Instruct GGUF
carries none, so the settings of its model card's example (temperature 0.2, top_p 0.9) are
built in: at the OpenAI default temperature of 1.0 this small model rambles.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# generation_config.json key -> SamplingParams field
HF_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "repetition_penalty": "repetition_penalty"}
GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
             "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
             "general.sampling.penalty_repeat": "repetition_penalty"}
EMBEDDED_DEFAULTS: dict[str, float | int] = {"temperature": 0.2, "top_p": 0.9}


def _clean(raw: dict[str, Any], keys: dict[str, str]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for key, field in keys.items():
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        out[field] = int(value) if field == "top_k" else float(value)
    return out


def hf_generation_defaults(model_dir: Path) -> dict[str, float | int]:
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        logger.warning("ignoring %s: %s", path, e)
        return {}
    if not isinstance(raw, dict) or raw.get("do_sample") is False:
        return {}  # the checkpoint asks for greedy decoding; its sampling knobs are inert
    return _clean(raw, HF_KEYS)


def gguf_generation_defaults(reader: Any, embedded: bool = False) -> dict[str, float | int]:
    raw = {key: reader.fields[key].contents() for key in GGUF_KEYS if key in reader.fields}
    found = _clean(raw, GGUF_KEYS)
    return dict(EMBEDDED_DEFAULTS) if embedded and not found else found
