"""Tiny FP8 checkpoints in the published layouts, made from a float checkpoint, with their
dequantized twin (the same weights as codes * scale, in float32, without quantization_config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from radixserve.layers.quantization.fp8 import FP8_DTYPE, FP8_MAX

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# layout -> (quantization_config, scale kind, scale tensor suffix)
LAYOUTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "compressed-tensors-tensor": ({
        "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "float", "strategy": "tensor",
                                                  "symmetric": True, "dynamic": False},
                                      "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor",
                                                            "symmetric": True, "dynamic": False}}}},
        "tensor", ".weight_scale"),
    "compressed-tensors-channel": ({
        "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                                                  "symmetric": True, "dynamic": False},
                                      "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                                            "symmetric": True, "dynamic": True}}}},
        "channel", ".weight_scale"),
    "compressed-tensors-block": ({
        "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                                                  "block_structure": [128, 128], "symmetric": True,
                                                  "dynamic": False},
                                      "input_activations": {"num_bits": 8, "type": "float", "strategy": "group",
                                                            "group_size": 128, "dynamic": True}}}},
        "block", ".weight_scale"),
    "fbgemm_fp8": ({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
                    "modules_to_not_convert": ["lm_head"]}, "channel", ".weight_scale"),
    "fp8-block": ({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": [128, 128]}, "block", ".weight_scale_inv"),
}


def quantize(w: torch.Tensor, kind: str, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (e4m3 codes, float32 scale) in the layout's own shape."""
    w = w.float()
    if kind == "tensor":
        scale = (w.abs().max() / FP8_MAX).reshape(1)
        return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale
    if kind == "channel":
        scale = w.abs().amax(dim=1, keepdim=True) / FP8_MAX
        return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale
    n, k = w.shape
    assert n % block == 0 and k % block == 0, (n, k)
    blocks = w.view(n // block, block, k // block, block)
    scale = blocks.abs().amax(dim=(1, 3)) / FP8_MAX
    codes = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).view(n, k)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, kind: str, block: int = 128) -> torch.Tensor:
    if kind != "block":
        return codes.float() * scale.float()
    return codes.float() * scale.repeat_interleave(block, 0).repeat_interleave(block, 1)


def write_fp8_checkpoint(src: Path, dest: Path, layout: str, with_input_scales: bool = False) -> tuple[Path, Path]:
    """(FP8 checkpoint dir, dequantized float32 twin dir) for `src`'s float weights."""
    from safetensors.torch import load_file, save_file

    qc, kind, suffix = LAYOUTS[layout]
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    fp8: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        if name.endswith(".weight") and name.split(".")[-2] in LINEARS:
            codes, scale = quantize(t, kind)
            fp8[name] = codes
            fp8[name.removesuffix(".weight") + suffix] = scale
            if with_input_scales:
                fp8[name.removesuffix(".weight") + ".input_scale"] = torch.tensor([0.05])
            ref[name] = dequantize(codes, scale, kind)
        else:
            fp8[name] = ref[name] = t
    config = json.loads((src / "config.json").read_text())
    out_fp8, out_ref = dest / f"{layout}-fp8", dest / f"{layout}-ref"
    for out, tensors, cfg in ((out_fp8, fp8, {**config, "quantization_config": qc}), (out_ref, ref, config)):
        out.mkdir(parents=True)
        for extra in src.iterdir():
            if extra.suffix != ".safetensors" and extra.name not in ("config.json", "model.safetensors.index.json"):
                shutil.copy2(extra, out / extra.name)
        (out / "config.json").write_text(json.dumps(cfg))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    return out_fp8, out_ref


def write_int4_twin(src: Path, dest: Path) -> Path:
    """A copy of a float checkpoint whose linear weights are `--quantization int4`'s 4-bit weights expanded
    back to float: what an int4 engine computes, up to its kernel's rounding."""
    from safetensors.torch import load_file, save_file

    from radixserve.layers.quantization.online import quantize_group_int4

    shutil.copytree(src, dest)
    for f in dest.glob("*.safetensors"):
        tensors = load_file(f)
        for name, t in tensors.items():
            if any(f"{p}.weight" in name for p in LINEARS):
                tensors[name] = quantize_group_int4(t.float()).dequantize().to(t.dtype)
        save_file(tensors, f)
    return dest


def write_expert_twin(fp8_dir: Path, twin_dir: Path, dest: Path) -> Path:
    """A copy of an FP8 checkpoint whose mixture-of-experts weights are their dequantized float32 values
    (from the twin) and every other linear layer stays FP8: it differs from the FP8 checkpoint only in
    how the experts are held."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(fp8_dir, dest)
    twin: dict[str, torch.Tensor] = {}
    for f in twin_dir.glob("*.safetensors"):
        twin.update(load_file(str(f)))
    for f in dest.glob("*.safetensors"):
        tensors = load_file(str(f))
        out = {}
        for name, t in tensors.items():
            if ".mlp.experts." not in name:
                out[name] = t
            elif name.endswith(".weight"):
                out[name] = twin[name]
            # else: the expert's scale, dropped with its codes
        save_file(out, str(f))
    return dest
