/* A decode step of a Llama-family decoder on CPU in one call: every layer's norms, products, rotary,
 * KV store and attention for one new token per request, then the final norm.
 *
 * Why: at batch 1 on a 2-core CPU the products read ~100 MB of packed weights a step and run at memory
 * speed, but the torch path around them issues ~12 small ops per layer (norms, casts, rotary, KV
 * copies, attention), each paying Python and dispatcher overhead; on the embedded model that overhead
 * was more than half of the step. llama.cpp runs the whole graph natively; this is the same idea for
 * the layers radixserve already holds: the weights are the packed layers' own (qdot.c's layout, read
 * in place), the KV cache is the pool's, the rotary table the model's. Only the embedding lookup and
 * the LM head (with its exact top-k refinement) stay in torch.
 *
 * The arithmetic follows the torch reference op by op in float32 (RMSNorm as HF computes it, rotate-half
 * rotary, softmax attention); sums run in another order (`omp simd` reductions: vector lanes, without
 * which each dot product of the attention would be one chain of dependent adds), so results agree to
 * float32 rounding, not bitwise. OpenMP resolves to torch's libgomp (see qdot.c); `nthreads` is torch's thread count. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int rs_qdot(const float *x, int64_t m, int64_t k, const uint8_t *codes, int64_t n, int packed4, const void *scale,
            const void *offset, int half, int64_t gs, int32_t c0, float *y, int nthreads);

/* A packed weight as qdot.c reads it (layers/quantization/dot_cpu.py holds the tensors). */
typedef struct {
    const uint8_t *codes;
    const void *scale;
    const void *offset;
    int64_t n, k, group_size, packed4, half, center;
} rs_qweight;

typedef struct {
    const float *ln1, *ln2;          /* [hidden] input and post-attention RMSNorm weights */
    const float *qkv_bias;           /* [(heads + 2 kv_heads) * head_dim] or NULL (Qwen2) */
    const float *q_norm, *k_norm;    /* [head_dim] or NULL (Qwen3's per-head norms) */
    float *k_cache, *v_cache;        /* the pool's [slots, kv_heads, head_dim] buffers of this layer */
    rs_qweight qkv, o, gate_up, down;
} rs_layer;

typedef struct {
    int64_t n_layers, hidden, heads, kv_heads, head_dim, inter;
    double eps, scale;               /* RMSNorm epsilon; attention scale (head_dim^-0.5) */
    const float *cos, *sin;          /* the rotary tables [max_position, head_dim] */
    const float *final_norm;         /* [hidden] */
    const rs_layer *layers;
} rs_model;

static int product(const rs_qweight *w, const float *x, int64_t m, float *y, int nthreads) {
    return rs_qdot(x, m, w->k, w->codes, w->n, (int)w->packed4, w->scale, w->offset, (int)w->half, w->group_size,
                   (int32_t)w->center, y, nthreads);
}

/* y = weight * (x * rsqrt(mean(x^2) + eps)), as RMSNorm.plain in float32. */
static void rms_norm(const float *x, const float *weight, int64_t n, float eps, float *y) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = weight[i] * (x[i] * r);
}

/* HF's rotate-half rotary on one head in place: x * cos + rotate_half(x) * sin. */
static void rotate(float *x, const float *cos, const float *sin, int64_t d) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] + (-b) * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* One query head over its request's `len` slots: softmax(q k^T * scale) v. `p` holds `len` floats. */
static void attend(const float *q, const float *k_cache, const float *v_cache, const int64_t *slots, int64_t len,
                   int64_t kv_heads, int64_t kvh, int64_t d, float scale, float *p, float *out) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; j++) {
        const float *k = k_cache + (slots[j] * kv_heads + kvh) * d;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < d; i++) s += q[i] * k[i];
        p[j] = s * scale;
        mx = p[j] > mx ? p[j] : mx;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        p[j] = expf(p[j] - mx);
        sum += p[j];
    }
    for (int64_t i = 0; i < d; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        const float *v = v_cache + (slots[j] * kv_heads + kvh) * d;
        for (int64_t i = 0; i < d; i++) out[i] += p[j] * v[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < d; i++) out[i] *= inv;
}

/* Rotary, q/k norms and bias on request b's fused qkv row, then its k and v into the pool at `loc`. */
static void qkv_epilogue(const rs_model *m, const rs_layer *L, float *qkv, int64_t pos, int64_t loc) {
    const int64_t d = m->head_dim, nh = m->heads, nkv = m->kv_heads, width = (nh + 2 * nkv) * d;
    const float eps = (float)m->eps;
    if (L->qkv_bias)
        for (int64_t i = 0; i < width; i++) qkv[i] += L->qkv_bias[i];
    const float *cos = m->cos + pos * d, *sin = m->sin + pos * d;
    for (int64_t h = 0; h < nh + nkv; h++) { /* q heads, then k heads */
        float *head = qkv + h * d;
        const float *norm = h < nh ? L->q_norm : L->k_norm;
        if (norm) rms_norm(head, norm, d, eps, head);
        rotate(head, cos, sin, d);
    }
    memcpy(L->k_cache + loc * nkv * d, qkv + nh * d, sizeof(float) * (size_t)(nkv * d));
    memcpy(L->v_cache + loc * nkv * d, qkv + (nh + nkv) * d, sizeof(float) * (size_t)(nkv * d));
}

/* hidden [bs, hidden]: the embeddings in, the final norm's output back. positions, out_loc, seq_lens and
 * req_rows [bs]; request b attends to slots req_to_token[req_rows[b] * stride + j], j < seq_lens[b] (its
 * own new slot, out_loc[b], among them). Returns 0, -1 where a product refused its shape, -2 where
 * memory ran out. */
int rs_decode(const rs_model *m, int64_t bs, const int64_t *positions, const int64_t *out_loc,
              const int64_t *req_to_token, int64_t stride, const int64_t *req_rows, const int64_t *seq_lens,
              float *hidden, int nthreads) {
    const int64_t H = m->hidden, d = m->head_dim, nh = m->heads, nkv = m->kv_heads, I = m->inter;
    const int64_t qkv_w = (nh + 2 * nkv) * d;
    const float eps = (float)m->eps, scale = (float)m->scale;
    int64_t max_len = 1;
    for (int64_t b = 0; b < bs; b++) max_len = seq_lens[b] > max_len ? seq_lens[b] : max_len;
    float *res = malloc(sizeof(float) * (size_t)(bs * H));
    float *x = malloc(sizeof(float) * (size_t)(bs * (H > nh * d ? H : nh * d)));
    float *qkv = malloc(sizeof(float) * (size_t)(bs * qkv_w));
    float *gu = malloc(sizeof(float) * (size_t)(bs * 2 * I));
    float *act = malloc(sizeof(float) * (size_t)(bs * I));
    /* One row of attention scores per thread: a buffer per (request, head) would be bs * heads * max_len
     * floats, hundreds of MB for 31 requests of a large model at long contexts, faulted in every step. */
    const int threads = nthreads > 0 ? nthreads : 1;
    float *scores = malloc(sizeof(float) * (size_t)(threads * max_len));
    int rc = (res && x && qkv && gu && act && scores) ? 0 : -2;
    for (int64_t l = 0; l < m->n_layers && rc == 0; l++) {
        const rs_layer *L = &m->layers[l];
        for (int64_t b = 0; b < bs; b++) { /* the residual stream takes the last block's output, then its norm */
            float *r = res + b * H, *h = hidden + b * H;
            if (l == 0) memcpy(r, h, sizeof(float) * (size_t)H);
            else for (int64_t i = 0; i < H; i++) r[i] = h[i] + r[i];
            rms_norm(r, L->ln1, H, eps, x + b * H);
        }
        if ((rc = product(&L->qkv, x, bs, qkv, nthreads)) != 0) break;
        for (int64_t b = 0; b < bs; b++) qkv_epilogue(m, L, qkv + b * qkv_w, positions[b], out_loc[b]);
        /* Attention writes x as [bs, heads * head_dim]: the o projection's input. Heads are independent, so
         * threads share them only where there is enough work to pay for waking the team. */
        const int64_t work = bs * nh * max_len * d, groups = nh / nkv;
#pragma omp parallel for schedule(static) num_threads(threads) if (work > (1 << 18))
        for (int64_t bh = 0; bh < bs * nh; bh++) {
            const int64_t b = bh / nh, h = bh % nh;
            float *p = scores + (int64_t)omp_get_thread_num() * max_len;
            attend(qkv + b * qkv_w + h * d, L->k_cache, L->v_cache, req_to_token + req_rows[b] * stride, seq_lens[b],
                   nkv, h / groups, d, scale, p, x + b * nh * d + h * d);
        }
        if ((rc = product(&L->o, x, bs, hidden, nthreads)) != 0) break;
        for (int64_t b = 0; b < bs; b++) {
            float *r = res + b * H, *h = hidden + b * H;
            for (int64_t i = 0; i < H; i++) r[i] = h[i] + r[i];
            rms_norm(r, L->ln2, H, eps, x + b * H);
        }
        if ((rc = product(&L->gate_up, x, bs, gu, nthreads)) != 0) break;
        for (int64_t b = 0; b < bs; b++) {
            const float *g = gu + b * 2 * I, *u = g + I;
            for (int64_t i = 0; i < I; i++) act[b * I + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        rc = product(&L->down, act, bs, hidden, nthreads);
    }
    if (rc == 0) {
        for (int64_t b = 0; b < bs; b++) {
            float *r = res + b * H, *h = hidden + b * H;
            for (int64_t i = 0; i < H; i++) r[i] = h[i] + r[i];
            rms_norm(r, m->final_norm, H, eps, h);
        }
    }
    free(res); free(x); free(qkv); free(gu); free(act); free(scores);
    return rc;
}
