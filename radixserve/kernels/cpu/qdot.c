/* Products of float activations with group-quantized weights on CPU: the activations are rounded to
 * integers per group (one float scale each), and each group's dot product runs on the integers. The
 * weights stay as the file's codes with one scale and one offset per group (w = scale * code + offset);
 * rs_qdot below says how the sums are formed.
 *
 * The activations get 15 bits, not llama.cpp's 8 (its Q8 activations): a rounded value q in
 * [-QMAX, QMAX] is split into two int8 halves, q = 256 h + l, and each 64-code chunk runs two int8
 * products (vpdpbusd) on the same weight bytes. With 8 bits, two runs of the embedded 30-layer model
 * whose float sums differ only in order drifted apart by 1-4 % in their KV rows: one rounding that
 * flips moves its group by 1/127 of its largest value, and in later layers that flips many more. With
 * 15 bits a flip moves 1/32639, far below bf16's own rounding. At batch 1 the product is bound by the
 * weights' bytes, so the second product costs little (measured in docs/quantization.md).
 *
 * Codes of up to 4 bits are packed two a byte, by chunks of 64 codes taken in pairs: byte j of a
 * pair's 64 bytes holds code j of its first chunk in the low nibble and code j of its second chunk in
 * the high one, so one 64-byte load and a mask (or a shift) give either chunk in order. A last,
 * unpaired chunk takes 32 bytes: byte j holds its code j (low) and code 32 + j (high). Codes of 5 to
 * 8 bits take one byte each. Built at first use with the machine's C compiler
 * (radixserve/kernels/cpu_native.py), -O3 -march=native -fopenmp: the AVX512-VNNI path (vpdpbusd:
 * unsigned codes times signed activations) where the CPU has it, plain C elsewhere. OpenMP here
 * resolves to the libgomp torch has loaded (same soname), so both share one thread pool and
 * torch.set_num_threads applies to these loops too. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define RS_QDOT_VNNI 1
#else
#define RS_QDOT_VNNI 0
#endif

#define CHUNK 64
#define MAX_K 16384 /* columns; the per-thread scale buffer is sized by it */
#define QMAX 32639  /* 127 * 257: the largest |q| whose halves h and l both fit int8 */

int rs_qdot_has_vnni(void) { return RS_QDOT_VNNI; }

/* x [m, k] -> q = round(x / dx) in [-QMAX, QMAX] as its halves qh, ql [m, k] (q = 256 qh + ql, both
 * int8), and per group: dx (its scale), sx (the exact sum of the group's x) and
 * rc = c0 * (sx - dx * sum of its q), c0 times what rounding moved the group's sum. */
static void quantize_rows(const float *x, int64_t m, int64_t k, int64_t gs, int32_t c0, int8_t *qh, int8_t *ql,
                          float *dx, float *sx, float *rc) {
    const int64_t groups = k / gs;
    for (int64_t r = 0; r < m; r++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *xg = x + r * k + g * gs;
            int8_t *hg = qh + r * k + g * gs, *lg = ql + r * k + g * gs;
            /* `omp simd` reductions: these loops run on every activation of every product, and without
             * them each would be one chain of dependent scalar steps. */
            float amax = 0.0f;
#pragma omp simd reduction(max : amax)
            for (int64_t i = 0; i < gs; i++) amax = fmaxf(amax, fabsf(xg[i]));
            const float d = amax / (float)QMAX;
            const float id = d > 0.0f ? 1.0f / d : 0.0f;
            int32_t sum = 0;
            float exact = 0.0f;
#pragma omp simd reduction(+ : sum, exact)
            for (int64_t i = 0; i < gs; i++) {
                const int32_t q = (int32_t)nearbyintf(xg[i] * id);
                const int32_t h = (q + 128) >> 8; /* floor((q + 128) / 256) (GCC and Clang shift signed ints
                                                     arithmetically); l = q - 256 h in [-128, 127] */
                hg[i] = (int8_t)h;
                lg[i] = (int8_t)(q - 256 * h);
                sum += q;
                exact += xg[i];
            }
            dx[r * groups + g] = d;
            sx[r * groups + g] = exact;
            rc[r * groups + g] = (float)c0 * (exact - d * (float)sum);
        }
    }
}

#if !RS_QDOT_VNNI
/* Sum over groups of offset[g] * sx[g] + scale[g] * rc[g]: the offsets' share of one output, and the
 * centring of the codes (see rs_qdot). */
static float offset_term(const float *scale, const float *offset, const float *sx, const float *rc, int64_t groups) {
    float acc = 0.0f;
    for (int64_t g = 0; g < groups; g++) acc += offset[g] * sx[g] + scale[g] * rc[g];
    return acc;
}
#endif

#if RS_QDOT_VNNI
#define ROWS 4 /* weight rows a pass: independent sums hide the multiply-add latency, one activation load */
#define INLINE static inline __attribute__((always_inline))

/* Lane l of chunk c holds codes 64c + 4l .. + 3. Its group's combined scale (weight scale times
 * activation scale) from `comb`, for groups of 16 or 32 (GS) or, with GS = 0, from the chunk's one
 * group `cg`. GS is a constant in every caller, so each case compiles without divisions. */
INLINE __m512 lane_scales(const float *comb, int64_t c, int GS, int64_t cg) {
    if (GS == 16) return _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                               _mm512_castps128_ps512(_mm_loadu_ps(comb + 4 * c)));
    if (GS == 32) return _mm512_insertf32x8(_mm512_set1_ps(comb[2 * c]), _mm256_set1_ps(comb[2 * c + 1]), 1);
    return _mm512_set1_ps(comb[cg]);
}

/* acc + s * (codes . q) over one chunk, q = 256 h + l: the high halves' sums shifted by 8 bits, the low
 * ones added on (|lane| <= 4 * 255 * QMAX < 2^31). */
INLINE __m512 step(__m512 acc, __m512i w, __m512i h, __m512i l, __m512 s) {
    const __m512i high = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, h), 8);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(high, w, l)), s, acc);
}

/* g..g+15 of a row of per-group factors stored as float32 or (HALF) float16, `count` of them (rest 0). */
INLINE __m512 load_factors(const void *p, int64_t g, int64_t count, int HALF) {
    const __mmask16 m = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
    if (HALF) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + g));
    return _mm512_maskz_loadu_ps(m, (const float *)p + g);
}

/* The lanes of acc plus the row's offset_term (see the plain C one). */
INLINE float finish(__m512 acc, const void *scale, const void *offset, const float *sx, const float *rc,
                    int64_t groups, int HALF) {
    for (int64_t g = 0; g < groups; g += 16) {
        acc = _mm512_fmadd_ps(load_factors(offset, g, groups - g, HALF), load_factors(sx, g, groups - g, 0), acc);
        acc = _mm512_fmadd_ps(load_factors(scale, g, groups - g, HALF), load_factors(rc, g, groups - g, 0), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

INLINE void combine_scales(const void *scale, const float *dx, int64_t groups, float *comb, int HALF) {
    for (int64_t g = 0; g < groups; g += 16) {
        /* Whole 64-byte stores (comb has room for them): the loads that follow can take their values from the
         * store buffer, which a masked store would not allow. */
        _mm512_storeu_ps(comb + g, _mm512_mul_ps(load_factors(scale, g, groups - g, HALF),
                                                 load_factors(dx, g, groups - g, 0)));
    }
}

/* Outputs i0 .. i0 + R - 1 for one quantized activation row. R (1 or ROWS), GS and PACKED4 are
 * constants where this is inlined; `chunk_group[c]` is chunk c's group where groups span chunks. */
INLINE void dot_rows(const int R, const int GS, const int PACKED4, const int HALF, const uint8_t *codes,
                     int64_t row_bytes, const void *scale, const void *offset, int64_t i0, int64_t k, int64_t groups, const int8_t *qh,
                     const int8_t *ql, const float *dx, const float *sx, const float *rc, const int32_t *chunk_group, float *comb,
                     float *y) {
    const int64_t chunks = k / CHUNK;
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const int64_t fsize = HALF ? 2 : 4; /* bytes a scale or offset */
    for (int r = 0; r < R; r++)
        combine_scales((const char *)scale + (i0 + r) * groups * fsize, dx, groups, comb + r * groups, HALF);
    __m512 even[ROWS], odd[ROWS]; /* two sums a row: consecutive chunks do not wait on each other */
    for (int r = 0; r < R; r++) even[r] = odd[r] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 1 < chunks; c += 2) {
        const __m512i h0 = _mm512_loadu_si512((const void *)(qh + c * CHUNK));
        const __m512i h1 = _mm512_loadu_si512((const void *)(qh + (c + 1) * CHUNK));
        const __m512i l0 = _mm512_loadu_si512((const void *)(ql + c * CHUNK));
        const __m512i l1 = _mm512_loadu_si512((const void *)(ql + (c + 1) * CHUNK));
        const int64_t g0 = GS ? 0 : chunk_group[c], g1 = GS ? 0 : chunk_group[c + 1];
        for (int r = 0; r < R; r++) {
            const uint8_t *row = codes + (i0 + r) * row_bytes;
            __m512i w0, w1;
            if (PACKED4) { /* a pair of chunks in one 64-byte load: low nibbles chunk c, high ones c + 1 */
                const __m512i b = _mm512_loadu_si512((const void *)(row + (c >> 1) * CHUNK));
                w0 = _mm512_and_si512(b, nib);
                w1 = _mm512_and_si512(_mm512_srli_epi16(b, 4), nib);
            } else {
                w0 = _mm512_loadu_si512((const void *)(row + c * CHUNK));
                w1 = _mm512_loadu_si512((const void *)(row + (c + 1) * CHUNK));
            }
            even[r] = step(even[r], w0, h0, l0, lane_scales(comb + r * groups, c, GS, g0));
            odd[r] = step(odd[r], w1, h1, l1, lane_scales(comb + r * groups, c + 1, GS, g1));
        }
    }
    if (c < chunks) { /* a last, unpaired chunk */
        const __m512i h = _mm512_loadu_si512((const void *)(qh + c * CHUNK));
        const __m512i l = _mm512_loadu_si512((const void *)(ql + c * CHUNK));
        const int64_t g = GS ? 0 : chunk_group[c];
        for (int r = 0; r < R; r++) {
            const uint8_t *row = codes + (i0 + r) * row_bytes;
            __m512i w;
            if (PACKED4) {
                const __m256i b = _mm256_loadu_si256((const __m256i *)(row + c * (CHUNK / 2)));
                const __m256i lo = _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(0x0F));
                w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            } else {
                w = _mm512_loadu_si512((const void *)(row + c * CHUNK));
            }
            even[r] = step(even[r], w, h, l, lane_scales(comb + r * groups, c, GS, g));
        }
    }
    for (int r = 0; r < R; r++)
        y[i0 + r] = finish(_mm512_add_ps(even[r], odd[r]), (const char *)scale + (i0 + r) * groups * fsize,
                           (const char *)offset + (i0 + r) * groups * fsize, sx, rc, groups, HALF);
}

/* One block of up to ROWS outputs, dispatched to the constant-folded variants. */
static void dot_block(int64_t nrows, int64_t gs, int packed4, int half, const uint8_t *codes, int64_t row_bytes,
                      const void *scale, const void *offset, int64_t i0, int64_t k, const int8_t *qh,
                      const int8_t *ql, const float *dx, const float *sx, const float *rc, const int32_t *chunk_group, float *comb,
                      float *y) {
    const int64_t groups = k / gs;
    const int GS = gs == 16 ? 16 : gs == 32 ? 32 : 0;
#define DOT(R, G, P, H) dot_rows(R, G, P, H, codes, row_bytes, scale, offset, i0, k, groups, qh, ql, dx, sx, rc, chunk_group, \
                                 comb, y)
#define BY_HALF(R, G, P) do { if (half) DOT(R, G, P, 1); else DOT(R, G, P, 0); } while (0)
#define BY_PACKING(R, G) do { if (packed4) BY_HALF(R, G, 1); else BY_HALF(R, G, 0); } while (0)
#define BY_GROUP(R) do { if (GS == 16) BY_PACKING(R, 16); else if (GS == 32) BY_PACKING(R, 32); \
                         else BY_PACKING(R, 0); } while (0)
    if (nrows == ROWS) {
        BY_GROUP(ROWS);
    } else {
        for (int64_t r = 0; r < nrows; r++) {
            const int64_t i = i0 + r;
#undef DOT
#define DOT(R, G, P, H) dot_rows(R, G, P, H, codes, row_bytes, scale, offset, i, k, groups, qh, ql, dx, sx, rc, chunk_group, \
                                 comb, y)
            BY_GROUP(1);
        }
    }
#undef DOT
#undef BY_HALF
#undef BY_PACKING
#undef BY_GROUP
}
#else
static float dot_row(const uint8_t *row, const float *scale, int64_t chunks, int64_t gs, int packed4,
                     const int8_t *qh, const int8_t *ql, const float *dx) {
    float acc = 0.0f;
    int64_t isum = 0; /* up to 256 codes of 255 times QMAX: more than int32 holds */
    for (int64_t c = 0; c < chunks; c++) {
        for (int64_t j = 0; j < CHUNK; j++) {
            const int64_t kk = c * CHUNK + j;
            int32_t code;
            if (packed4 && (c | 1) < chunks) {
                const uint8_t b = row[(c >> 1) * CHUNK + j];
                code = (c & 1) ? (b >> 4) : (b & 0x0F);
            } else if (packed4) {
                const uint8_t b = row[c * (CHUNK / 2) + (j & 31)];
                code = j < 32 ? (b & 0x0F) : (b >> 4);
            } else {
                code = row[kk];
            }
            isum += (int64_t)code * (256 * (int32_t)qh[kk] + (int32_t)ql[kk]);
            if ((kk + 1) % gs == 0) {
                const int64_t g = kk / gs;
                acc += scale[g] * dx[g] * (float)isum;
                isum = 0;
            }
        }
    }
    return acc;
}
#endif

/* y [m, n] = x [m, k] times the weight [n, k] transposed. k must be a multiple of 64 and of gs; gs
 * a multiple of 16 (16 and 32 share chunks; 64 and up span them). Scales and offsets [n, k / gs] are
 * float32, or float16 with `half` (the VNNI path only: GGUF's Q4_0/Q4_1/Q8_0 store theirs so, and
 * the weights' bytes are most of what a batch-1 step reads).
 *
 * Rounding the activations moves each product by sum_k w[k] * e[k] (e: x's rounding error). With the
 * codes centred on c0 (half their range: w = scale * (code - c0) + (offset + scale * c0)), the part
 * on the centred codes uses the rounded x and the constant part the exact group sum sx, which leaves
 * sum_k scale * (code[k] - c0) * e[k]: Q8_0's signed values as llama.cpp multiplies them, and for
 * Q4_1 or the K-quants (large offsets) far less than their uncentred weights would give:
 *   y = sum_g scale * dx * sum_k code * q  +  offset * sx  +  scale * c0 * (sx - dx * sum_k q).
 * `nthreads` is the caller's thread count (torch.get_num_threads(): OpenMP's own default is per thread).
 * Returns 0, or -1 for a shape the kernel does not take (the caller checks shapes first; this is the
 * last guard). */
int rs_qdot(const float *x, int64_t m, int64_t k, const uint8_t *codes, int64_t n, int packed4,
            const void *scale, const void *offset, int half, int64_t gs, int32_t c0, float *y, int nthreads) {
    if (k % CHUNK || gs % 16 || k % gs || k > MAX_K || m < 1 || (half && !RS_QDOT_VNNI)) return -1;
    const int64_t groups = k / gs;
    const int64_t row_bytes = packed4 ? k / 2 : k;
    int8_t *qh = (int8_t *)malloc((size_t)(2 * m * k)), *ql = qh ? qh + m * k : NULL;
    float *dx = (float *)malloc(sizeof(float) * (size_t)(m * groups));
    float *sx = (float *)malloc(sizeof(float) * (size_t)(m * groups));
    float *rc = (float *)malloc(sizeof(float) * (size_t)(m * groups));
    if (!qh || !dx || !sx || !rc) {
        free(qh); free(dx); free(sx); free(rc);
        return -2;
    }
    quantize_rows(x, m, k, gs, c0, qh, ql, dx, sx, rc);
#if RS_QDOT_VNNI
    const int64_t blocks = (n + ROWS - 1) / ROWS, chunks = k / CHUNK;
    int32_t chunk_group[MAX_K / CHUNK];
    for (int64_t c = 0; c < chunks; c++) chunk_group[c] = (int32_t)((c * CHUNK) / gs);
#pragma omp parallel num_threads(nthreads)
    {
        const int64_t padded = (groups + 15) / 16 * 16;
        float comb[ROWS * padded]; /* groups <= MAX_K / 16: 16 KiB at most */
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t i0 = b * ROWS, nrows = n - i0 < ROWS ? n - i0 : ROWS;
            for (int64_t r = 0; r < m; r++)
                dot_block(nrows, gs, packed4, half, codes, row_bytes, scale, offset, i0, k, qh + r * k, ql + r * k, dx + r * groups,
                          sx + r * groups, rc + r * groups, chunk_group, comb, y + r * n);
        }
    }
#else
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *row = codes + i * row_bytes;
        for (int64_t r = 0; r < m; r++)
            y[r * n + i] = dot_row(row, (const float *)scale + i * groups, k / CHUNK, gs, packed4, qh + r * k, ql + r * k,
                                   dx + r * groups)
                           + offset_term((const float *)scale + i * groups, (const float *)offset + i * groups,
                                         sx + r * groups, rc + r * groups, groups);
    }
#endif
    free(qh); free(dx); free(sx); free(rc);
    return 0;
}
