"""The CPU integer product (kernels/cpu/qdot.c through layers/quantization/dot_cpu.py) against plain torch.

Two references: `activation_reference` (the file's exact weight times the activations rounded to 15-bit
integers per group, as the kernel rounds them: what the kernel must reproduce up to float summation
order) and the float product with the file's weight (what the rounded activations cost: ACTIVATION_TOL,
a hundredth of the int4 kernel's REL_TOL). Weights come from real GGUF-encoded blocks (tests/layers/test_quantization.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from radixserve.kernels import cpu_native
from radixserve.layers.quantization import GroupQuantized, Int4PackedWeight
from radixserve.layers.quantization.dot_cpu import (
    DENSE_FROM_ROWS,
    QMAX,
    IntDotWeight,
    fits,
    quantize_activations,
)
from radixserve.layers.quantization.int4_cpu import pack_for_device
from radixserve.model_loader.gguf_quant import gguf_group_quantized
from tests.layers.test_quantization import BITS, REL_TOL, TYPES, gguf_blocks, rel_err

pytestmark = pytest.mark.skipif(cpu_native.load() is None,
                                reason=f"the CPU kernels are not built here: {cpu_native.unavailable_reason()}")
# The kernel sums int32 products exactly and then float32 terms in another order than torch's GEMM:
# a few float32 roundings of the largest term, far below anything the quantization itself moves.
SUMMATION_TOL = 1e-5
# Against the float product: steps of absmax / 32639 per group move a product by ~1e-5 of its size
# (seen up to 2e-5 on these draws); torch's int4 kernel, with bf16 activations, is held to REL_TOL (1e-2).
ACTIVATION_TOL = 1e-4


def dot_weight(q: GroupQuantized) -> IntDotWeight:
    lib = cpu_native.load()
    assert lib is not None
    return IntDotWeight(q, lib, cpu_native.has_vnni())


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("batch", [1, 7])
def test_matches_the_quantized_activation_reference(type_name: str, batch: int) -> None:
    raw, ref = gguf_blocks(type_name, 96, 512, seed=batch)
    q = gguf_group_quantized(raw, type_name, 96, 512)
    w = dot_weight(q)
    # The file's codes, scales and offsets as they are: read back, the weight is the file's own.
    torch.testing.assert_close(w.dequantize(), q.dequantize(), atol=0, rtol=0)
    # Seeded; against the float product the rounded activations cost ~1e-5 (ACTIVATION_TOL).
    x = torch.randn(batch, 512, generator=torch.Generator().manual_seed(batch))
    y = w.apply(x)
    assert y.dtype == torch.float32 and y.shape == (batch, 96)
    assert rel_err(y, w.activation_reference(x)) < SUMMATION_TOL
    assert rel_err(y, x @ q.dequantize().T) < ACTIVATION_TOL  # the weight as loaded
    assert rel_err(y, x @ ref.T) < REL_TOL  # the file's: Q6_K is requantized at load (its own bound)
    bias = torch.randn(96)
    torch.testing.assert_close(w.apply(x, bias), y + bias)
    per_code = 1 if type_name in BITS else 0.5  # codes over 4 bits take a byte; up to 4, two share one
    # Scales and offsets in float16 where the file's are (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), else float32.
    assert w.half == (cpu_native.has_vnni() and type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"))
    assert w.nbytes() == int(96 * 512 * per_code) + 2 * (2 if w.half else 4) * 96 * (512 // 32)


@pytest.mark.parametrize(("bits", "group_size"), [(4, 16), (6, 16), (4, 64), (8, 128), (4, 256)])
def test_every_group_width_the_kernel_takes(bits: int, group_size: int) -> None:
    # Groups of 16 (four to a 64-code chunk), 32 (above), and of 64 and more (a chunk inside one group).
    gen = torch.Generator().manual_seed(bits * 1000 + group_size)
    n, k = 80, 768
    q = GroupQuantized(torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=gen),
                       torch.rand(n, k // group_size, generator=gen) * 0.01,
                       -torch.rand(n, k // group_size, generator=gen) * 0.05, group_size, bits, f"test{bits}")
    w = dot_weight(q)
    torch.testing.assert_close(w.dequantize(), q.dequantize(), atol=0, rtol=0)
    x = torch.randn(3, k, generator=gen)
    assert rel_err(w.apply(x), w.activation_reference(x)) < SUMMATION_TOL


def test_quantized_activations_are_15_bit_steps_and_zero_groups_stay_zero() -> None:
    x = torch.randn(2, 128)
    x[0, :32] = 0.0  # a group of zeros: scale 0, no division by it
    x[1, 40] = 1000.0  # an outlier only coarsens its own group
    xq = quantize_activations(x, 32)
    assert torch.equal(xq[0, :32], torch.zeros(32))
    steps = xq.view(2, 4, 32) / (x.view(2, 4, 32).abs().amax(-1, keepdim=True) / QMAX).clamp_min(1e-30)
    torch.testing.assert_close(steps, steps.round(), atol=1e-2, rtol=0)
    assert steps.abs().max() <= QMAX + 1e-2
    torch.testing.assert_close(xq[1, 64:], x[1, 64:], atol=float(x[1, 64:].abs().max()) / (2 * QMAX) * 1.001, rtol=0)
    raw, _ = gguf_blocks("Q4_1", 64, 128)
    w = dot_weight(gguf_group_quantized(raw, "Q4_1", 64, 128))
    assert rel_err(w.apply(x), w.activation_reference(x)) < SUMMATION_TOL


def test_values_at_the_edges_of_the_int8_halves() -> None:
    # q = 256 h + l with both halves int8: the largest |q| (QMAX), and q where h steps (127/128, -128/-129).
    # A wrong split is off by 256 steps of the group, far past SUMMATION_TOL.
    amax = float(QMAX)
    edges = [amax, -amax, 127.0, 128.0, -128.0, -129.0, 255.0, 256.0, -255.0, -256.0, 0.0, 1.0, -1.0]
    x = torch.tensor(edges + [float(v) for v in range(-9, 10)], dtype=torch.float32)  # 32: one group
    x = torch.stack([x, -x.flip(0)]).repeat(1, 2)  # [2, 64]: group scale 1.0 (absmax / QMAX)
    assert torch.equal(quantize_activations(x, 32), x)  # these are the rounded values themselves
    raw, _ = gguf_blocks("Q8_0", 16, 64)
    w = dot_weight(gguf_group_quantized(raw, "Q8_0", 16, 64))
    assert rel_err(w.apply(x), w.activation_reference(x)) < SUMMATION_TOL
    assert rel_err(w.apply(x), x @ w.dequantize().T) < SUMMATION_TOL


def test_rows_are_independent_of_the_thread_count() -> None:
    # Each output row is one thread's sum in a fixed order: one thread or two give the same bits.
    raw, _ = gguf_blocks("Q4_1", 192, 576)
    w = dot_weight(gguf_group_quantized(raw, "Q4_1", 192, 576))
    x = torch.randn(5, 576)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = w.apply(x)
        torch.set_num_threads(2)
        two = w.apply(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q8_0", "Q4_K"])
def test_a_row_gives_the_same_bits_alone_or_in_a_batch(type_name: str) -> None:
    # Each output is one thread's sum over the chunks in a fixed order (even and odd chunks apart, then
    # added), for a block of four weight rows or a last one alone: batching changes no bit of a row.
    raw, _ = gguf_blocks(type_name, 67, 512, seed=3)  # 67 weight rows: 16 blocks of four and three alone
    w = dot_weight(gguf_group_quantized(raw, type_name, 67, 512))
    x = torch.randn(DENSE_FROM_ROWS - 1, 512, generator=torch.Generator().manual_seed(11))
    alone = torch.cat([w.apply(x[i:i + 1]) for i in range(x.shape[0])])
    assert torch.equal(w.apply(x), alone)
    assert torch.equal(w.apply(x[:7]), alone[:7])
    assert rel_err(alone, w.activation_reference(x)) < SUMMATION_TOL


def test_the_plain_c_product_without_avx512(tmp_path: Path) -> None:
    # The path for CPUs without AVX512-VNNI (some CI machines), built here with AVX512 turned off.
    cc = cpu_native._compiler()
    assert cc is not None  # the module's skip already required a build
    dest = tmp_path / cpu_native.LIBRARY
    cpu_native._build(cc, dest, extra_flags=("-mno-avx512f",))
    lib = cpu_native._declare(ctypes.CDLL(str(dest)))
    assert lib.rs_qdot_has_vnni() == 0
    for type_name, n, k in (("Q4_0", 40, 320), ("Q6_K", 24, 512), ("Q4_K", 33, 256)):  # 320: an unpaired chunk
        raw, _ = gguf_blocks(type_name, n, k, seed=n)
        w = IntDotWeight(gguf_group_quantized(raw, type_name, n, k), lib, False)
        x = torch.randn(5, k, generator=torch.Generator().manual_seed(k))
        assert rel_err(w.apply(x), w.activation_reference(x)) < SUMMATION_TOL
        fast = dot_weight(gguf_group_quantized(raw, type_name, n, k))  # the machine's own build, same weight
        assert rel_err(w.apply(x), fast.apply(x)) < SUMMATION_TOL


@pytest.mark.parametrize("gemm_dtype", [torch.bfloat16, torch.float32])
def test_many_rows_take_one_gemm_and_agree_with_the_kernel(gemm_dtype: torch.dtype,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """From DENSE_FROM_ROWS rows on, one GEMM in base.cpu_gemm_dtype (bf16 where the CPU has native bf16
    GEMMs, float32 elsewhere); each dtype forced here, whatever this CPU has."""
    from radixserve.layers.quantization import dot_cpu

    monkeypatch.setattr(dot_cpu, "cpu_gemm_dtype", lambda: gemm_dtype)
    raw, ref = gguf_blocks("Q4_1", 128, 512, seed=5)
    w = dot_weight(gguf_group_quantized(raw, "Q4_1", 128, 512))
    x = torch.randn(DENSE_FROM_ROWS + 3, 512, generator=torch.Generator().manual_seed(5))
    y = w.apply(x)
    per_row = torch.cat([w.apply(x[i:i + 1]) for i in range(x.shape[0])])  # the kernel, one row at a time
    assert rel_err(y, x @ ref.T) < REL_TOL
    exact = x @ w.dequantize().T
    if gemm_dtype == torch.float32:  # the exact product, and the kernel's within its activation rounding
        assert rel_err(y, exact) < 1e-6 and rel_err(y, per_row) < ACTIVATION_TOL
    else:  # bf16 roundings of the activations and the weight
        assert 1e-4 < rel_err(y, exact) < REL_TOL and rel_err(y, per_row) < REL_TOL


def test_the_gemm_dtype_follows_the_cpus_bf16() -> None:
    from radixserve.layers.quantization.base import cpu_gemm_dtype

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert cpu_gemm_dtype() == (torch.bfloat16 if native else torch.float32)


def test_shapes_the_kernel_cannot_take_go_to_the_int4_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_native.ENV_SWITCH, "1")  # the C product where it takes the shape, VNNI or not
    raw, _ = gguf_blocks("Q4_1", 64, 96)  # 96 columns: not a multiple of the 64-code chunk
    q = gguf_group_quantized(raw, "Q4_1", 64, 96)
    assert fits(q) is not None and "96 columns" in str(fits(q))
    assert isinstance(pack_for_device(q, torch.device("cpu")), Int4PackedWeight)
    raw, _ = gguf_blocks("Q4_1", 64, 128)
    q = gguf_group_quantized(raw, "Q4_1", 64, 128)
    assert isinstance(pack_for_device(q, torch.device("cpu")), IntDotWeight)
    monkeypatch.setenv(cpu_native.ENV_SWITCH, "0")  # switched off: torch's kernel, and the reason says why
    assert isinstance(pack_for_device(q, torch.device("cpu")), Int4PackedWeight)
    assert cpu_native.unavailable_reason() == f"{cpu_native.ENV_SWITCH}=0"


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A build of its own in an empty cache, and the process's build back afterwards."""
    monkeypatch.setenv("RADIXSERVE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(cpu_native, "_reason", [])
    cpu_native._load_built.cache_clear()
    yield
    cpu_native._load_built.cache_clear()


def test_without_a_compiler_the_reason_is_given(fresh_build: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc")
    assert cpu_native.load() is None
    assert cpu_native.unavailable_reason() == "no C compiler (no-such-cc) on PATH"


def test_a_fresh_build_lands_in_the_cache_keyed_by_source_and_cpu(fresh_build: None) -> None:
    lib = cpu_native.load()
    assert lib is not None
    built = list(cpu_native.cache_root().glob(f"*/{cpu_native.LIBRARY}"))
    assert len(built) == 1 and not list(cpu_native.cache_root().glob("*/*.tmp"))
    raw, _ = gguf_blocks("Q8_0", 32, 128)
    w = IntDotWeight(gguf_group_quantized(raw, "Q8_0", 32, 128), lib, cpu_native.has_vnni())
    x = torch.randn(2, 128)
    assert rel_err(w.apply(x), w.activation_reference(x)) < SUMMATION_TOL


def test_products_take_the_c_kernel_only_with_its_vnni_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AVX512-VNNI the plain C loop is slower than torch's int4 op: that op serves unless
    RADIXSERVE_CPU_KERNELS=1 asks for the C product."""
    q = gguf_group_quantized(gguf_blocks("Q4_1", 64, 256)[0], "Q4_1", 64, 256)
    monkeypatch.delenv(cpu_native.ENV_SWITCH, raising=False)
    for vnni, switch, expected in ((True, None, "int-dot-cpu"), (False, None, "int4-cpu"), (False, "1", "int-dot-cpu"),
                                   (True, "0", "int4-cpu")):
        monkeypatch.setattr(cpu_native, "has_vnni", lambda v=vnni: v)
        if switch is None:
            monkeypatch.delenv(cpu_native.ENV_SWITCH, raising=False)
        else:
            monkeypatch.setenv(cpu_native.ENV_SWITCH, switch)
        assert pack_for_device(q, torch.device("cpu")).name.startswith(expected), (vnni, switch)
        assert (cpu_native.products_reason() == "") == (expected == "int-dot-cpu")
