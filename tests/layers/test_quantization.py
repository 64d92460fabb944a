"""Packed int4 linear weights (CPU) against the dequantized reference, from real GGUF-encoded blocks.

Q4_0 and Q4_1 blocks come from gguf's own quantizer; gguf has none for Q4_K, so its blocks are random
bytes with sane fp16 super-scales (every byte pattern is a valid Q4_K block). The reference is always
`gguf.quants.dequantize` of the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radixserve.distributed.parallel_state import ParallelGroup
from radixserve.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from radixserve.layers.quantization import GroupQuantized, Int4PackedWeight, UnsupportedQuantizationError
from radixserve.model_loader.gguf_quant import gguf_group_quantized

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                                reason="torch without the CPU int4 ops")

EXACT_TYPES = ("Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q8_0")
TYPES = (*EXACT_TYPES, "Q6_K")  # Q6_K is requantized to 8-bit codes on 32-value groups
BITS = {"Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q8_0": 8, "Q6_K": 8}
# bf16 keeps 8 significant bits (unit roundoff 2^-9 ~= 0.2 %). The packed path rounds the activations,
# the scales/zeros and its output to bf16: independent errors of ~0.2 % each, so the product lands
# within ~0.4 % of the float32 result in relative L2 norm (seen: 0.3 %); 1 % leaves room for the
# sum's accumulation order and is still 8x below the 4-bit quantization error itself (Q4_0/Q4_1:
# 8-9 % on Gaussian weights).
REL_TOL = 1e-2


def gguf_blocks(type_name: str, rows: int, cols: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(raw GGUF bytes [rows, bytes per row], float32 reference weight [rows, cols])."""
    import gguf.quants as gq
    from gguf import GGMLQuantizationType

    qtype = GGMLQuantizationType[type_name]
    rng = np.random.default_rng(seed)
    if type_name in ("Q4_K", "Q5_K", "Q6_K"):  # the gguf package cannot quantize K-quants: random blocks
        nb = rows * cols // 256
        raw = rng.integers(0, 256, (nb, {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[type_name]), dtype=np.uint8)
        if type_name == "Q6_K":  # int8 sub-scales, then d
            raw[:, 208:210] = rng.uniform(0.0002, 0.001, (nb, 1)).astype(np.float16).view(np.uint8)
        else:  # d and dmin, then 6-bit sub-scales
            raw[:, 0:4] = np.stack([rng.uniform(0.001, 0.01, nb), rng.uniform(0.001, 0.01, nb)], 1) \
                .astype(np.float16).view(np.uint8)
        raw = raw.reshape(rows, -1)
    else:
        raw = gq.quantize(rng.standard_normal((rows, cols)).astype(np.float32) * 0.05, qtype)
    return raw, torch.from_numpy(np.asarray(gq.dequantize(raw, qtype), dtype=np.float32).reshape(rows, cols))


def use_cpu_kernels(kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing on CPU from here on with the C integer product ("native": RADIXSERVE_CPU_KERNELS=1, so also
    where the CPU lacks its VNNI path; skipped where it is not built) or torch's int4 kernel ("torch-int4":
    RADIXSERVE_CPU_KERNELS=0)."""
    from radixserve.kernels import cpu_native

    if kernels == "torch-int4":
        monkeypatch.setenv(cpu_native.ENV_SWITCH, "0")
    elif cpu_native.load() is None:
        pytest.skip(f"the CPU kernels are not built here: {cpu_native.unavailable_reason()}")
    else:
        monkeypatch.setenv(cpu_native.ENV_SWITCH, "1")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("type_name", EXACT_TYPES)
def test_gguf_blocks_decode_to_the_exact_reference(type_name: str) -> None:
    raw, ref = gguf_blocks(type_name, 48, 512)
    q = gguf_group_quantized(raw, type_name, 48, 512)
    bits = BITS.get(type_name, 4)
    assert q.codes.dtype == torch.uint8 and q.bits == bits and int(q.codes.max()) < 2**bits and q.group_size == 32
    torch.testing.assert_close(q.dequantize(), ref, atol=0, rtol=0)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("batch", [1, 7])
def test_packed_matmul_matches_dequantized(type_name: str, batch: int) -> None:
    raw, ref = gguf_blocks(type_name, 96, 512, seed=batch)
    packed = Int4PackedWeight(gguf_group_quantized(raw, type_name, 96, 512))
    # The packed weight read back differs from the file's only by bf16 rounding of scale and zero:
    # |w' - w| <= (2^bits |scale| + |zero|) 2^-9 per element, i.e. below 3 % of the largest weight.
    w = packed.dequantize()
    assert (w - ref).abs().max() <= 0.03 * ref.abs().max()
    x = torch.randn(batch, 512)
    y = packed.apply(x)
    assert y.dtype == torch.float32 and y.shape == (batch, 96)
    assert rel_err(y, x @ ref.T) < REL_TOL
    bias = torch.randn(96)
    torch.testing.assert_close(packed.apply(x, bias), y + bias)
    halves = 2 if type_name in BITS else 1  # codes over 4 bits: a high and a low nibble
    assert packed.nbytes() == halves * (96 * 512 // 2 + (512 // 32) * 96 * 2 * 2)  # nibbles + bf16 (scale, zero)


@pytest.mark.parametrize("type_name", TYPES)
def test_many_rows_take_the_expanded_weight_and_agree_with_the_kernel(type_name: str) -> None:
    # 128 output rows (whole blocks of 64 or 32): from DENSE_FROM_ROWS rows on, the weight is expanded to bf16
    # for one GEMM; below, the int4 kernel runs. Both against the file's float weight, and each other.
    from radixserve.layers.quantization import int4_cpu

    assert int4_cpu._packing_block() in (32, 64), "torch's CPU int4 packing changed: prefill lost its fast path"
    raw, ref = gguf_blocks(type_name, 128, 512, seed=3)
    packed = Int4PackedWeight(gguf_group_quantized(raw, type_name, 128, 512))
    assert packed._expandable
    rows = int4_cpu.DENSE_FROM_ROWS + 5
    x = torch.randn(rows, 512)
    y = packed.apply(x)
    per_row = torch.cat([packed.apply(x[i:i + 1]) for i in range(rows)])  # the kernel, one row at a time
    assert rel_err(y, x @ ref.T) < REL_TOL
    assert rel_err(y, per_row) < REL_TOL / 2
    torch.testing.assert_close(packed._expanded().float(), packed.dequantize(), atol=0.01 * ref.abs().max().item(),
                               rtol=0)


def test_q6_k_requantizes_within_its_stated_bound() -> None:
    raw, ref = gguf_blocks("Q6_K", 64, 512)
    # Block 0's eight pairs of sub-scales: equal pairs must come out exact.
    raw.reshape(-1, 210)[0, 192:208] = np.array([5, 5, -7, -7, 3, 3, 100, 100, 1, 1, 2, 2, 9, 9, 127, 127],
                                                np.int8).view(np.uint8)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    ref = torch.from_numpy(np.asarray(dequantize(raw, GGMLQuantizationType.Q6_K), np.float32).reshape(64, 512))
    q = gguf_group_quantized(raw, "Q6_K", 64, 512)
    assert q.bits == 8 and q.group_size == 32 and q.source == "Q6_K"
    err = (q.dequantize() - ref).abs()
    step = q.scale.abs().repeat_interleave(32, 1)  # s: a quarter of the coarser sub-block's step
    assert torch.equal(err[0, :256], torch.zeros(256))
    assert bool((err <= step * (1 + 1e-6)).all())  # |s| at most (the clip), |s| / 2 otherwise
    assert float((err > step / 2 * (1 + 1e-6)).float().mean()) < 1e-3


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0"])
def test_split_nibbles_are_exact_given_bf16_scales(type_name: str) -> None:
    # Q8_0 (offset -128 d) and Q5_0 (-16 d) read back exactly as the codes times the scale rounded
    # to bf16, with the offset kept in code units: no other error is added by the split.
    raw, _ = gguf_blocks(type_name, 32, 256)
    q = gguf_group_quantized(raw, type_name, 32, 256)
    s_b = q.scale.to(torch.bfloat16).float()
    zero_point = (q.offset / q.scale).round()
    want = (q.codes.float() + zero_point.repeat_interleave(32, 1)) * s_b.repeat_interleave(32, 1)
    torch.testing.assert_close(Int4PackedWeight(q).dequantize(), want, atol=0, rtol=0)


def test_fused_projections_of_different_widths_pack_together() -> None:
    # Q4_K q/k with a Q5_K v (as K-quant mixes do): one packed weight, each part still exact.
    parts = [gguf_group_quantized(gguf_blocks(t, 32, 256, seed=i)[0], t, 32, 256)
             for i, t in enumerate(("Q4_K", "Q4_K", "Q5_K"))]
    fused = GroupQuantized.cat_rows(parts)
    assert fused.bits == 5 and fused.source == "Q4_K+Q5_K"
    ref = torch.cat([p.dequantize() for p in parts])
    w = Int4PackedWeight(fused).dequantize()
    assert (w - ref).abs().max() <= 0.03 * ref.abs().max()


@pytest.mark.parametrize("kernels", ["native", "torch-int4"])
@pytest.mark.parametrize("tp_size", [1, 3])
def test_lm_head_packs_its_vocab_slice_and_pads_the_last_rank(tp_size: int, kernels: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from radixserve.layers.vocab_embedding import REFINE_TOP, ParallelLMHead, VocabParallelEmbedding

    use_cpu_kernels(kernels, monkeypatch)  # torch-int4: bf16 activations, the refined head

    vocab, hidden = 100, 64  # 34 rows per rank at TP 3: the last rank holds 32 and pads 2
    raw, ref = gguf_blocks("Q8_0", vocab, hidden)
    x = torch.randn(5, hidden)
    slices = []
    for rank in range(tp_size):
        tp = ParallelGroup(rank=rank, size=tp_size)
        embed = VocabParallelEmbedding(vocab, hidden, tp)
        embed.weight.weight_loader(embed.weight, ref)  # type: ignore[attr-defined]
        head = ParallelLMHead(vocab, hidden, tp)
        head.tie_to(embed)
        head.load_quantized(gguf_group_quantized(raw, "Q8_0", vocab, hidden))
        assert head.quant is not None and head.quant.out_features == head.end - head.start
        assert embed.weight.shape == (head.rows_per_rank, hidden)  # the tied table stays for lookups
        logits = head.quant.apply(x)
        pad = head.rows_per_rank - (head.end - head.start)
        slices.append(torch.nn.functional.pad(logits, (0, pad)) if pad else logits)
        assert getattr(head.quant, "precise", False) == (kernels == "native")
        if tp_size == 1 and kernels == "native":
            # The CPU integer product (kernels/cpu/qdot.c): within ~1e-5 everywhere, nothing to refine.
            got = head.compute_logits(x)
            assert torch.equal(got, logits)
            assert rel_err(got, x @ ref.T) < 1e-4
        elif tp_size == 1:
            # A tied head recomputes its best REFINE_TOP candidates from the float table: exact there,
            # the packed product elsewhere.
            got = head.compute_logits(x)
            top = logits.topk(REFINE_TOP, dim=-1).indices
            exact = x @ ref.T
            torch.testing.assert_close(got.gather(-1, top), exact.gather(-1, top))
            rest = torch.ones_like(got, dtype=torch.bool).scatter(-1, top, False)
            assert torch.equal(got[rest], logits[rest])
    logits = torch.cat(slices, dim=-1)[:, :vocab]  # what the gather and the cut make of them
    assert rel_err(logits, x @ ref.T) < REL_TOL


def test_column_qkv_merged_row_layers_load_packed_under_tp() -> None:
    """Each TP rank packs its own rows (column) or input columns (row); recombined they give the
    dequantized product, and forward_split yields the fused projections in order."""
    hidden, d, heads, kv_heads, inter = 256, 32, 4, 2, 512
    q_raw, q_ref = gguf_blocks("Q4_1", heads * d, hidden, 1)
    k_raw, k_ref = gguf_blocks("Q4_0", kv_heads * d, hidden, 2)
    v_raw, v_ref = gguf_blocks("Q4_1", kv_heads * d, hidden, 3)
    g_raw, g_ref = gguf_blocks("Q4_K", inter, hidden, 4)
    u_raw, u_ref = gguf_blocks("Q4_K", inter, hidden, 5)
    o_raw, o_ref = gguf_blocks("Q4_K", hidden, inter, 6)
    x = torch.randn(3, hidden)
    outs: dict[str, list[torch.Tensor]] = {"q": [], "k": [], "v": [], "gate": [], "up": [], "down": []}
    for rank in range(2):
        tp = ParallelGroup(rank=rank, size=2)
        qkv = QKVParallelLinear(hidden, d, heads, kv_heads, tp=tp)
        for shard, raw, rows in (("q", q_raw, heads * d), ("k", k_raw, kv_heads * d), ("v", v_raw, kv_heads * d)):
            assert qkv.quant is None  # packs only once all three projections are in
            qkv.load_quantized(gguf_group_quantized(raw, "Q4_1" if shard != "k" else "Q4_0", rows, hidden), shard)
        assert qkv.quant is not None and qkv.weight.numel() == 0  # the float weight is gone
        q, k, v = qkv.forward_split(x)
        gate_up = MergedColumnParallelLinear(hidden, [inter, inter], tp=tp)
        gate_up.load_quantized(gguf_group_quantized(g_raw, "Q4_K", inter, hidden), 0)
        gate_up.load_quantized(gguf_group_quantized(u_raw, "Q4_K", inter, hidden), 1)
        gate, up = gate_up.forward_split(x)
        down = RowParallelLinear(inter, hidden, tp=tp, reduce_results=False)
        down.load_quantized(gguf_group_quantized(o_raw, "Q4_K", hidden, inter))
        h = torch.randn(3, inter, generator=torch.Generator().manual_seed(9))
        part = down(h.narrow(1, rank * inter // 2, inter // 2))
        for key, val in zip(outs, (q, k, v, gate, up, part), strict=True):
            outs[key].append(val)
    h = torch.randn(3, inter, generator=torch.Generator().manual_seed(9))
    assert rel_err(torch.cat(outs["q"], 1), x @ q_ref.T) < REL_TOL
    assert rel_err(torch.cat(outs["k"], 1), x @ k_ref.T) < REL_TOL
    assert rel_err(torch.cat(outs["v"], 1), x @ v_ref.T) < REL_TOL
    assert rel_err(torch.cat(outs["gate"], 1), x @ g_ref.T) < REL_TOL
    assert rel_err(torch.cat(outs["up"], 1), x @ u_ref.T) < REL_TOL
    assert rel_err(outs["down"][0] + outs["down"][1], h @ o_ref.T) < REL_TOL


def test_plain_column_layer_packs_at_once() -> None:
    raw, ref = gguf_blocks("Q4_0", 64, 256)
    layer = ColumnParallelLinear(256, 64, bias=True)
    layer.bias.data.copy_(torch.arange(64.0))  # type: ignore[union-attr]
    layer.load_quantized(gguf_group_quantized(raw, "Q4_0", 64, 256))
    x = torch.randn(2, 256)
    assert rel_err(layer(x), x @ ref.T + torch.arange(64.0)) < REL_TOL


def test_row_slice_that_splits_a_group_is_refused() -> None:
    # 96 input columns over 2 ranks: 48 per rank, not a multiple of the 32-column groups.
    raw, _ = gguf_blocks("Q4_1", 16, 96)
    layer = RowParallelLinear(96, 16, tp=ParallelGroup(rank=1, size=2))
    with pytest.raises(UnsupportedQuantizationError, match=r"Q4_1: columns \[48, 96\) do not fall on its 32-column"):
        layer.load_quantized(gguf_group_quantized(raw, "Q4_1", 16, 96))
    assert layer.quant is None and layer.weight.shape == (16, 48)  # left for the dequantized load


def test_unpackable_types_are_named() -> None:
    with pytest.raises(UnsupportedQuantizationError, match=r"GGUF TQ2_0 has no packed form"):
        gguf_group_quantized(np.zeros((4, 66), np.uint8), "TQ2_0", 4, 256)
    odd = GroupQuantized(torch.zeros(4, 48, dtype=torch.uint8), torch.ones(4, 3), torch.zeros(4, 3), 16, 4, "X")
    with pytest.raises(UnsupportedQuantizationError, match=r"X: 4-bit codes in groups of 16"):
        Int4PackedWeight(odd)


def test_online_int4_rounds_to_nearest_and_packs_every_linear() -> None:
    from radixserve.layers.quantization.online import quantize_group_int4, quantize_linears_int4

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(48, 256, generator=gen) * 0.05
    q = quantize_group_int4(w)
    assert q.bits == 4 and q.group_size == 32 and int(q.codes.max()) <= 15
    # Round to nearest on 15 steps between each group's min and max: off by at most half a step.
    step = q.scale.repeat_interleave(32, 1)
    assert bool(((q.dequantize() - w).abs() <= step / 2 + 1e-6).all())

    col, row, odd = ColumnParallelLinear(256, 48), RowParallelLinear(64, 256), RowParallelLinear(40, 16)
    with torch.no_grad():
        for m in (col, row, odd):
            m.weight.copy_(torch.randn(tuple(m.weight.shape), generator=gen) * 0.05)
    col_ref = quantize_group_int4(col.weight.data).dequantize()
    model = torch.nn.ModuleList([col, row, odd])
    assert quantize_linears_int4(model) == 2  # 40 input columns are not whole groups: `odd` stays dense
    assert odd.quant is None and odd.weight.shape == (16, 40)
    assert col.quant is not None and row.quant is not None
    assert col.weight.numel() == 0
    x = torch.randn(5, 256, generator=gen)
    assert rel_err(col(x), x @ col_ref.T) < REL_TOL


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ2_XXS", "IQ1_M"])
def test_codebook_and_low_bit_types_requantize_within_half_a_step(type_name: str) -> None:
    # Random blocks (the gguf package cannot quantize these); blocks whose random fp16 scales decode to
    # inf or nan are dropped, as a real file has none.
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType[type_name]
    per_block, nbytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 256, (1024, nbytes), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ok = np.isfinite(dequantize(raw, qtype)).all(axis=1) & (np.abs(dequantize(raw, qtype)).max(axis=1) < 1e4)
    blocks = raw[ok][: (int(ok.sum()) // 4) * 4]
    rows, cols = blocks.shape[0] // 4, 4 * per_block
    ref = torch.from_numpy(np.asarray(dequantize(blocks, qtype), np.float32).reshape(rows, cols))
    q = gguf_group_quantized(blocks.reshape(rows, -1), type_name, rows, cols)
    assert q.bits == 8 and q.group_size == 32 and q.source == type_name and rows >= 16
    err = (q.dequantize() - ref).abs()
    step = q.scale.repeat_interleave(32, 1)  # (hi - lo) / 255 of each group
    # Half a step, plus float32's rounding of lo + s * code at the group's magnitude.
    magnitude = ref.view(rows, -1, 32).abs().amax(dim=2).repeat_interleave(32, 1)
    assert bool((err <= step / 2 + 4 * torch.finfo(torch.float32).eps * magnitude).all())
    # The group's extremes are codes 0 and 255: exact up to float32 rounding.
    lo = ref.view(rows, -1, 32).amin(dim=2)
    torch.testing.assert_close(q.offset, lo, atol=0, rtol=0)
    packed = Int4PackedWeight(q)  # and the kernel runs them (split nibbles)
    x = torch.randn(3, cols)
    assert rel_err(packed.apply(x), x @ ref.T) < REL_TOL


@pytest.mark.parametrize("block", [64, 32])
def test_unpack_reads_the_layout_of_either_cpu(block: int) -> None:
    """torch packs int4 rows in blocks of 64 on AVX512 CPUs and of 32 on AVX2 ones: the reader takes
    either (built here from the layout's description; the CPU at hand packs in one of them)."""
    from radixserve.layers.quantization import int4_cpu

    n, k = 2 * block, 8
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(block))
    c = codes.view(n // block, block, k)
    packed = (c[:, : block // 2] | (c[:, block // 2:] << 4)).permute(0, 2, 1).reshape(n, k // 2)
    assert torch.equal(int4_cpu._unpack_codes(packed, block), codes)
    assert not torch.equal(int4_cpu._unpack_codes(packed, 96 - block), codes)  # the other layout misreads
