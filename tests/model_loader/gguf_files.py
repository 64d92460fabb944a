"""A tiny Llama GGUF with quantized tensors, written on the fly (gguf's writer and quantizer): the
packed paths end to end, on CPU and on the GPU, against the same file dequantized."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Per-tensor types: 4-bit codes for most linears, 8-bit (Q8_0, split nibbles) for v and down and for
# the tied head (token_embd), 5-bit for o: every packed width in one model.
TYPES = {"attn_q": "Q4_0", "attn_k": "Q4_0", "attn_v": "Q8_0", "attn_output": "Q5_0", "ffn_gate": "Q4_1",
         "ffn_up": "Q4_1", "ffn_down": "Q8_0"}


# Types the gguf package cannot quantize: random blocks with their fp16 scale fields set (byte offsets
# in the block -> value), so the weights stay small; the packed and dequantized paths read the same bytes.
RANDOM_BLOCKS = {"Q3_K": {108: 0.004}, "Q2_K": {80: 0.01, 82: 0.005}}


def _random_blocks(type_name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    import gguf

    per_block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    raw = rng.integers(0, 256, (rows * cols // per_block, nbytes), dtype=np.uint8)
    for offset, value in RANDOM_BLOCKS[type_name].items():
        raw[:, offset:offset + 2] = np.full((raw.shape[0], 1), value, np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def write_tiny_gguf(path: Path, vocab: int, hidden: int = 128, intermediate: int = 256, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, seed: int = 0, types: dict[str, str] | None = None) -> Path:
    """A tied-embedding Llama of random weights (N(0, 0.08)) in `path`; tokenizer not included (pass
    `tokenizer_path`). `types` overrides TYPES per projection kind (K-quants need 256-column multiples)."""
    kinds = {**TYPES, **(types or {})}
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_context_length(512)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)

    def add(name: str, array: np.ndarray, type_name: str | None) -> None:
        if type_name is None:
            writer.add_tensor(name, array)
            return
        qtype = gguf.GGMLQuantizationType[type_name]
        if type_name in RANDOM_BLOCKS:
            rows, cols = array.shape
            writer.add_tensor(name, _random_blocks(type_name, rows, cols, rng), raw_dtype=qtype)
        else:
            writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)

    add("token_embd.weight", w(vocab, hidden), "Q8_0")
    add("output_norm.weight", np.ones(hidden, np.float32), None)
    shapes = {"attn_q": (heads * head_dim, hidden), "attn_k": (kv_heads * head_dim, hidden),
              "attn_v": (kv_heads * head_dim, hidden), "attn_output": (hidden, heads * head_dim),
              "ffn_gate": (intermediate, hidden), "ffn_up": (intermediate, hidden), "ffn_down": (hidden, intermediate)}
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32), None)
        add(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32), None)
        for kind, (rows, cols) in shapes.items():
            add(f"blk.{i}.{kind}.weight", w(rows, cols), kinds[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
