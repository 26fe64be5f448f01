/* genmodels native CPU kernels: small-M linear layers, a fused decoder decode step (decoder-only
 * and encoder–decoder), and an encoder forward over packed rows.
 *
 * Compiled on first use by genmodels/native/__init__.py (cc -O3 -march=native -fopenmp) and
 * called through ctypes; no Python or PyTorch headers. All tensors are fp32, contiguous,
 * row-major, PyTorch's layouts: a linear weight is W (N, K) and y = x Wᵀ + b.
 *
 * Why: a batch-1..16 decode step is a chain of matrix-vector products whose weights stream from
 * DRAM, plus ~150 tiny tensor ops. Here each weight row is read once, straight from DRAM, by a
 * dot-product kernel (several rows and up to four inputs per tile), and a whole step — embedding,
 * every block, the final norm and the head — runs in one OpenMP region with no per-op dispatch.
 * The arithmetic is the model's, in fp32; only the summation order inside dot products differs
 * from PyTorch's kernels (≈1e-6 relative). The PyTorch path stays the reference (tests hold them
 * equal); genmodels falls back to it whenever this library cannot be built.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GM_AVX2 1
#endif

#define INLINE static inline __attribute__((always_inline))

int gm_version(void) { return 1; }

int gm_simd(void) {
#ifdef GM_AVX2
    return 8;
#else
    return 1;
#endif
}

int gm_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------------------------------------
 * Dot-product tiles: out[i, j] = Σ_k x[i, k] · w[j, k] for i < MR inputs and j < NR weight rows.
 * MR and NR are compile-time constants at every call site, so the accumulators live in registers.
 */
#ifdef GM_AVX2
INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

INLINE void tile_dot(const float *x, int64_t ldx, const float *w, int64_t ldw, int64_t K, const int MR,
                     const int NR, float out[4][4]) {
    int64_t k = 0;
#ifdef GM_AVX2
    /* named accumulators, not an array: GCC keeps them in registers (an array spills every step) */
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
           a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
#define GM_ROW(i)                                                                                   \
    if (MR > i) {                                                                                   \
        __m256 xv = _mm256_loadu_ps(x + i * ldx + k);                                               \
        a##i##0 = _mm256_fmadd_ps(xv, w0, a##i##0);                                                 \
        if (NR > 1) a##i##1 = _mm256_fmadd_ps(xv, w1, a##i##1);                                     \
        if (NR > 2) a##i##2 = _mm256_fmadd_ps(xv, w2, a##i##2);                                     \
        if (NR > 3) a##i##3 = _mm256_fmadd_ps(xv, w3, a##i##3);                                     \
    }
    for (; k + 8 <= K; k += 8) {
        __m256 w0 = _mm256_loadu_ps(w + k), w1 = w0, w2 = w0, w3 = w0;
        if (NR > 1) w1 = _mm256_loadu_ps(w + ldw + k);
        if (NR > 2) w2 = _mm256_loadu_ps(w + 2 * ldw + k);
        if (NR > 3) w3 = _mm256_loadu_ps(w + 3 * ldw + k);
        GM_ROW(0) GM_ROW(1) GM_ROW(2) GM_ROW(3)
    }
#undef GM_ROW
    const __m256 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i][j] = hsum8(acc[i][j]);
#else
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i][j] = 0.0f;
#endif
    for (; k < K; k++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) out[i][j] += x[i * ldx + k] * w[j * ldw + k];
}

/* Write a finished tile: y = (accumulate ? y : 0) + dot + bias. */
INLINE void tile_store(float *y, int64_t ldy, const float *bias, int accumulate, const int MR, const int NR,
                       float out[4][4]) {
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float v = out[i][j] + (bias ? bias[j] : 0.0f);
            y[i * ldy + j] = accumulate ? y[i * ldy + j] + v : v;
        }
}

#define TILE(MR, NR)                                                                        \
    do {                                                                                    \
        float o[4][4];                                                                      \
        tile_dot(x + m * ldx, ldx, W + n * ldw, ldw, K, MR, NR, o);                         \
        tile_store(y + m * ldy + n, ldy, bias ? bias + n : 0, accumulate, MR, NR, o);       \
    } while (0)

/* Columns [n0, n1) of y (M, N) = x (M, K) · W (N, K)ᵀ + bias, rows of x, W, y ldx, ldw, ldy apart.
 * Each block of weight rows is read from memory once and used for every input row while in L1. */
static void linear_rows_ld(const float *x, int64_t ldx, int64_t M, int64_t K, const float *W, int64_t ldw,
                           const float *bias, float *y, int64_t ldy, int64_t n0, int64_t n1, int accumulate) {
    int64_t n = n0;
    if (M == 1) {
        const int64_t m = 0;
        for (; n + 4 <= n1; n += 4) TILE(1, 4);
        for (; n < n1; n++) TILE(1, 1);
        return;
    }
    for (; n + 3 <= n1; n += 3) {
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) TILE(4, 3);
        for (; m < M; m++) TILE(1, 3);
    }
    for (; n < n1; n++)
        for (int64_t m = 0; m < M; m++) TILE(1, 1);
}

static void linear_rows(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y,
                        int64_t N, int64_t n0, int64_t n1, int accumulate) {
    linear_rows_ld(x, K, M, K, W, K, bias, y, N, n0, n1, accumulate);
}

/* Inside a parallel region: split the N output rows over the team in blocks of 8 (static, so each
 * thread streams one contiguous slab of W). Ends with the team's barrier. */
static void linear_team(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y,
                        int64_t N, int accumulate) {
    const int64_t nb = (N + 7) / 8;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t n0 = b * 8, n1 = n0 + 8 < N ? n0 + 8 : N;
        linear_rows(x, M, K, W, bias, y, N, n0, n1, accumulate);
    }
}

/* y (M, N) = x (M, K) · W (N, K)ᵀ + bias, on n_threads threads. */
void gm_linear(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
               int n_threads) {
    if (n_threads <= 1 || (int64_t)N * K < 32768) {
        linear_rows(x, M, K, W, bias, y, N, 0, N, 0);
        return;
    }
#pragma omp parallel num_threads(n_threads)
    linear_team(x, M, K, W, bias, y, N, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Fused decode step of a pre-norm decoder: decoder-only (GPT-2 / Llama / Mistral) or the decoder
 * of an encoder–decoder (T5), whose blocks add cross-attention over the encoder's memory.
 * The field order of these structs is mirrored by ctypes in genmodels/native/decoder.py.
 */
typedef struct {
    const float *norm1_w, *norm1_b, *qkv_w, *qkv_b, *out_w, *out_b;
    const float *norm2_w, *norm2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    float *k_cache, *v_cache; /* (B, H_kv, L_max, dh) */
    /* cross-attention (NULL cross_q_w: none): q from Norm_x(x), k/v of the memory (B, H_kv, S, dh) */
    const float *normx_w, *normx_b, *cross_q_w, *cross_q_b, *cross_out_w, *cross_out_b, *mem_k, *mem_v;
} gm_layer;

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_RELU = 2, ACT_SILU = 3 };
enum { POS_NONE = 0, POS_TABLE = 1, POS_ROPE = 2, POS_ALIBI = 3 };

typedef struct {
    int64_t n_layers, batch, d, n_heads, n_kv, dh, d_ff, vocab, max_len;
    int64_t norm, final_norm, gated, act, pos_kind, rot_dim, rope_len, window, mask_stride, n_threads, mem_len;
    int64_t post_norm; /* 0: x += f(Norm x) (GPT-2, Llama, T5); 1: x = Norm(x + f(x)) (the original Transformer) */
    double norm_eps, attn_scale, emb_scale, out_scale;
    const float *embed, *pos_table, *rope_cos, *rope_sin, *inv_freq, *alibi, *final_w, *final_b, *head_w, *head_b;
    const float *dist_bias;  /* (H, L_max): self-attention score bias by distance query − key (T5), or NULL */
    const int64_t *mem_mask; /* (B, mem_len), 1 = real memory token, or NULL */
    gm_layer *layers;
    float *scratch; /* gm_scratch_floats() floats */
} gm_model;

int64_t gm_scratch_floats(const gm_model *m) {
    int64_t B = m->batch, qkv = (m->n_heads + 2 * m->n_kv) * m->dh, ff = (m->gated ? 2 : 1) * m->d_ff;
    int64_t keys = m->max_len > m->mem_len ? m->max_len : m->mem_len;
    return B * (2 * m->d + qkv + 2 * m->n_heads * m->dh + ff + m->d_ff) + m->n_threads * keys;
}

/* Σ (x[i] − c)^p for p = 1 or 2, in eight interleaved fp32 partial sums (more accurate than one
 * running sum, and vectorised). */
static float centred_sum(const float *x, int64_t d, float c, int p) {
    int64_t i = 0;
    float total = 0.0f;
#ifdef GM_AVX2
    __m256 acc = _mm256_setzero_ps(), vc = _mm256_set1_ps(c);
    for (; i + 8 <= d; i += 8) {
        __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vc);
        acc = p == 2 ? _mm256_fmadd_ps(v, v, acc) : _mm256_add_ps(acc, v);
    }
    total = hsum8(acc);
#endif
    for (; i < d; i++) total += p == 2 ? (x[i] - c) * (x[i] - c) : x[i] - c;
    return total;
}

static void norm_row(const float *x, float *y, int64_t d, int kind, float eps, const float *w, const float *b) {
    if (kind == NORM_RMS) { /* y = x · rsqrt(mean(x²) + ε) · γ */
        const float r = 1.0f / sqrtf(centred_sum(x, d, 0.0f, 2) / (float)d + eps);
        for (int64_t i = 0; i < d; i++) y[i] = x[i] * r * w[i];
        return;
    }
    /* y = (x − μ) / √(σ² + ε) · γ + β */
    const float mu = centred_sum(x, d, 0.0f, 1) / (float)d;
    const float r = 1.0f / sqrtf(centred_sum(x, d, mu, 2) / (float)d + eps);
    if (b)
        for (int64_t i = 0; i < d; i++) y[i] = (x[i] - mu) * r * w[i] + b[i];
    else
        for (int64_t i = 0; i < d; i++) y[i] = (x[i] - mu) * r * w[i];
}

/* ---------------------------------------------------------------------------------------------
 * Vector math (AVX2): exp as Cephes' expf (range reduction by ln 2, degree-6 polynomial, ≈1 ulp);
 * erf as Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the formula PyTorch's vectorised erf uses.
 */
#ifdef GM_AVX2
INLINE __m256 exp8(__m256 x) {
    /* clamp; operand order lets a NaN through (max/min return their second operand on NaN) */
    x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

INLINE __m256 erf8(__m256 x) {
    const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f)), ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), ax, _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 y = _mm256_fnmadd_ps(p, exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), ax), ax)), _mm256_set1_ps(1.0f));
    return _mm256_or_ps(y, sign);
}

INLINE __m256 activation8(__m256 v, int act) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    switch (act) {
    case 0: /* ACT_GELU: x/2 · (1 + erf(x/√2)) */
        return _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf8(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)))));
    case 1: { /* ACT_GELU_TANH: x/2 · (1 + tanh(u)), tanh(u) = 1 − 2 / (e^{2u} + 1) */
        __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.79788456080286536f),
                                 _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v), _mm256_mul_ps(v, v), v));
        __m256 th = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(exp8(_mm256_add_ps(u, u)), one)));
        return _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, th));
    }
    case 2: return _mm256_max_ps(v, _mm256_setzero_ps());
    default: /* SiLU: x / (1 + e^{−x}) */
        return _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
    }
}
#endif

/* Inside a parallel region: y[b] = Norm(x[b]) for b < B rows of d (in place when y == x). */
static void norm_rows(const float *x, float *y, int64_t B, int64_t d, int kind, float eps, const float *w,
                      const float *bias) {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) norm_row(x + b * d, y + b * d, d, kind, eps, w, bias);
}

static float activation(float v, int act) {
    switch (act) {
    case ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case ACT_GELU_TANH: return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    default: return v / (1.0f + expf(-v));
    }
}

/* h[i] = act(g[i]) (· g[up + i] when gated, up ≠ NULL) for i < n. */
static void activate(float *h, const float *g, const float *up, int64_t n, int act) {
    int64_t i = 0;
#ifdef GM_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256 a = activation8(_mm256_loadu_ps(g + i), act);
        if (up) a = _mm256_mul_ps(a, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(h + i, a);
    }
#endif
    for (; i < n; i++) h[i] = up ? activation(g[i], act) * up[i] : activation(g[i], act);
}

/* HF half-split RoPE on the first rot_dim channels of one head vector: channel i pairs with
 * i + rot_dim/2; v ← v·cos + rotate_half(v)·sin. */
static void rope_head(float *v, const gm_model *m, int64_t pos) {
    const int64_t half = m->rot_dim / 2;
    float cbuf[512], sbuf[512];
    const float *c, *s;
    if (pos < m->rope_len) {
        c = m->rope_cos + pos * m->rot_dim;
        s = m->rope_sin + pos * m->rot_dim;
    } else { /* beyond the table: the same fp32 angle pos · inv_freq */
        for (int64_t i = 0; i < half; i++) {
            float a = (float)pos * m->inv_freq[i];
            cbuf[i] = cbuf[i + half] = cosf(a);
            sbuf[i] = sbuf[i + half] = sinf(a);
        }
        c = cbuf, s = sbuf;
    }
    for (int64_t i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
    }
}

/* softmax(q·Kᵀ·scale + bias) V for one query head over keys [lo, n_keys) of its KV head; the query
 * sits at n_keys − 1 and bias(j) = slope·(j − q) + dist_bias[q − j] (ALiBi, T5). */
static void attend(const float *q, const float *K, const float *V, int64_t ldk, int64_t n_keys, int64_t dh,
                   float scale, const int64_t *key_ok, int64_t lo, float slope, const float *dist_bias,
                   float *scores, float *out) {
    float mx = -INFINITY;
    for (int64_t j = lo; j < n_keys; j++) {
        if (key_ok && !key_ok[j]) {
            scores[j] = -INFINITY;
            continue;
        }
        const float *k = K + j * ldk;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < dh; i++) s += q[i] * k[i];
        s = s * scale + slope * (float)(j - (n_keys - 1));
        if (dist_bias) s += dist_bias[n_keys - 1 - j];
        scores[j] = s;
        if (s > mx) mx = s;
    }
    float total = 0.0f;
    for (int64_t i = 0; i < dh; i++) out[i] = 0.0f;
    if (mx == -INFINITY) { /* no visible key: PyTorch's finfo.min mask makes the row uniform over all keys */
        for (int64_t j = 0; j < n_keys; j++)
            for (int64_t i = 0; i < dh; i++) out[i] += V[j * ldk + i];
        for (int64_t i = 0; i < dh; i++) out[i] /= (float)(n_keys > 0 ? n_keys : 1);
        return;
    }
    int64_t j = lo; /* scores[j] <- exp(scores[j] − max), masked keys (−inf) <- 0 */
#ifdef GM_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= n_keys; j += 8) {
        __m256 s = _mm256_loadu_ps(scores + j);
        __m256 p = _mm256_and_ps(exp8(_mm256_sub_ps(s, vmx)), _mm256_cmp_ps(s, ninf, _CMP_GT_OQ));
        _mm256_storeu_ps(scores + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    total = hsum8(acc);
#endif
    for (; j < n_keys; j++) {
        float p = scores[j] == -INFINITY ? 0.0f : expf(scores[j] - mx);
        scores[j] = p;
        total += p;
    }
    for (j = lo; j < n_keys; j++) {
        const float p = scores[j];
        if (p == 0.0f) continue;
        const float *v = V + j * ldk;
        for (int64_t i = 0; i < dh; i++) out[i] += p * v[i];
    }
    float inv = 1.0f / total;
    for (int64_t i = 0; i < dh; i++) out[i] *= inv;
}

/* One decode step: token ids (B,), position ids (B,) and cache position `start` -> logits (B, V).
 * Writes this step's keys/values into the caches at `start`. key_mask (B, mask_stride) int64,
 * 1 = real token, may be NULL. Returns 0. */
int gm_decoder_step(const gm_model *m, const int64_t *ids, const int64_t *positions, const int64_t *key_mask,
                    int64_t start, float *logits) {
    const int64_t B = m->batch, D = m->d, H = m->n_heads, HKV = m->n_kv, DH = m->dh, F = m->d_ff;
    const int64_t QKV = (H + 2 * HKV) * DH, FF = (m->gated ? 2 : 1) * F, L = m->max_len;
    float *x = m->scratch, *xn = x + B * D, *qkv = xn + B * D, *att = qkv + B * QKV, *ff = att + B * H * DH;
    float *hid = ff + B * FF, *q2 = hid + B * F, *scores_all = q2 + B * H * DH;
    const int64_t n_scores = L > m->mem_len ? L : m->mem_len;
    const float eps = (float)m->norm_eps, scale = (float)m->attn_scale;
    const int64_t n_keys = start + 1, group = H / HKV;

#pragma omp parallel num_threads(m->n_threads)
    {
        float *scores = scores_all + thread_id() * n_scores;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *e = m->embed + ids[b] * D;
            for (int64_t i = 0; i < D; i++) x[b * D + i] = e[i] * (float)m->emb_scale;
            if (m->pos_kind == POS_TABLE) {
                const float *p = m->pos_table + positions[b] * D;
                for (int64_t i = 0; i < D; i++) x[b * D + i] += p[i];
            }
        }
        const int post = (int)m->post_norm;
/* a sub-layer's input: Norm(x) (pre-norm) or x (post-norm) */
#define GM_SUBLAYER_IN(w, bias)                                                                          \
    (post ? x : (norm_rows(x, xn, B, D, (int)m->norm, eps, w, bias), xn))
/* after x += f(·): post-norm normalises x in place */
#define GM_SUBLAYER_OUT(w, bias)                                                                         \
    do {                                                                                                 \
        if (post) norm_rows(x, x, B, D, (int)m->norm, eps, w, bias);                                     \
    } while (0)
        for (int64_t l = 0; l < m->n_layers; l++) {
            const gm_layer *ly = &m->layers[l];
            linear_team(GM_SUBLAYER_IN(ly->norm1_w, ly->norm1_b), B, D, ly->qkv_w, ly->qkv_b, qkv, QKV, 0);
            /* rotate q and k heads, append k and v to the cache */
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                float *row = qkv + b * QKV;
                if (m->pos_kind == POS_ROPE)
                    for (int64_t h = 0; h < H + HKV; h++) rope_head(row + h * DH, m, positions[b]);
                for (int64_t h = 0; h < HKV; h++) {
                    int64_t at = ((b * HKV + h) * L + start) * DH;
                    memcpy(ly->k_cache + at, row + (H + h) * DH, DH * sizeof(float));
                    memcpy(ly->v_cache + at, row + (H + HKV + h) * DH, DH * sizeof(float));
                }
            }
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) {
                int64_t b = bh / H, h = bh % H, kv = ((b * HKV + h / group) * L) * DH;
                int64_t lo = m->window > 0 && n_keys > m->window ? n_keys - m->window : 0;
                float slope = m->pos_kind == POS_ALIBI ? m->alibi[h] : 0.0f;
                attend(qkv + b * QKV + h * DH, ly->k_cache + kv, ly->v_cache + kv, DH, n_keys, DH, scale,
                       key_mask ? key_mask + b * m->mask_stride : 0, lo, slope, m->dist_bias ? m->dist_bias + h * L : 0,
                       scores, att + (b * H + h) * DH);
            }
            linear_team(att, B, H * DH, ly->out_w, ly->out_b, x, D, 1); /* x += out(att) */
            GM_SUBLAYER_OUT(ly->norm1_w, ly->norm1_b);
            if (ly->cross_q_w) { /* x += Cross(Norm_x(x), memory) */
                const int64_t S = m->mem_len;
                linear_team(GM_SUBLAYER_IN(ly->normx_w, ly->normx_b), B, D, ly->cross_q_w, ly->cross_q_b, q2, H * DH, 0);
#pragma omp for schedule(static)
                for (int64_t bh = 0; bh < B * H; bh++) {
                    int64_t b = bh / H, h = bh % H, kv = ((b * HKV + h / group) * S) * DH;
                    attend(q2 + (b * H + h) * DH, ly->mem_k + kv, ly->mem_v + kv, DH, S, DH, scale,
                           m->mem_mask ? m->mem_mask + b * S : 0, 0, 0.0f, 0, scores, att + (b * H + h) * DH);
                }
                linear_team(att, B, H * DH, ly->cross_out_w, ly->cross_out_b, x, D, 1);
                GM_SUBLAYER_OUT(ly->normx_w, ly->normx_b);
            }
            linear_team(GM_SUBLAYER_IN(ly->norm2_w, ly->norm2_b), B, D, ly->fc1_w, ly->fc1_b, ff, FF, 0);
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                const float *g = ff + b * FF;
                activate(hid + b * F, g, m->gated ? g + F : 0, F, (int)m->act);
            }
            linear_team(hid, B, F, ly->fc2_w, ly->fc2_b, x, D, 1); /* x += fc2(act) */
            GM_SUBLAYER_OUT(ly->norm2_w, ly->norm2_b);
        }
#undef GM_SUBLAYER_IN
#undef GM_SUBLAYER_OUT
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (m->final_norm) norm_row(x + b * D, xn + b * D, D, (int)m->norm, eps, m->final_w, m->final_b);
            else memcpy(xn + b * D, x + b * D, D * sizeof(float));
            if (m->out_scale != 1.0)
                for (int64_t i = 0; i < D; i++) xn[b * D + i] *= (float)m->out_scale;
        }
        linear_team(xn, B, D, m->head_w, m->head_b, logits, m->vocab, 0);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Encoder forward (BERT / MiniLM layouts) over packed rows: the real tokens of a batch, each
 * attending to the keys of its own sequence only, so padding costs nothing.
 *
 * Its matrices multiply many rows at once (GEMM), so weights are repacked once, as a BLAS does
 * internally: W (N, K) becomes panels Wp (⌈N/16⌉, K, 16), the 16 outputs of a panel contiguous
 * for each k. The micro-kernel keeps a 6 × 16 block of outputs in twelve AVX registers and, for
 * each k, broadcasts six inputs against the panel's two vectors.
 */
void gm_pack(const float *W, int64_t N, int64_t K, float *Wp) {
    const int64_t P = (N + 15) / 16;
    for (int64_t p = 0; p < P; p++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < 16; j++) {
                int64_t n = p * 16 + j;
                Wp[(p * K + k) * 16 + j] = n < N ? W[n * K + k] : 0.0f;
            }
}

/* y[i, 0:nvalid] (+)= x[i, :] · panel + bias for i < MR. */
INLINE void panel_kernel(const float *x, int64_t ldx, int64_t K, const float *wp, int64_t ldw, float *y,
                         int64_t ldy, int64_t nvalid, const float *bias, int accumulate, const int MR) {
    float acc[6][16];
#ifdef GM_AVX2
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define GM_PROW(i)                                                                                  \
    if (MR > i) {                                                                                   \
        __m256 xb = _mm256_broadcast_ss(x + i * ldx + k);                                           \
        c##i##0 = _mm256_fmadd_ps(xb, w0, c##i##0);                                                 \
        c##i##1 = _mm256_fmadd_ps(xb, w1, c##i##1);                                                 \
    }
    for (int64_t k = 0; k < K; k++) {
        __m256 w0 = _mm256_loadu_ps(wp + k * ldw), w1 = _mm256_loadu_ps(wp + k * ldw + 8);
        GM_PROW(0) GM_PROW(1) GM_PROW(2) GM_PROW(3) GM_PROW(4) GM_PROW(5)
    }
#undef GM_PROW
    const __m256 c[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(acc[i], c[i][0]);
        _mm256_storeu_ps(acc[i] + 8, c[i][1]);
    }
#else
    for (int i = 0; i < MR; i++) {
        for (int j = 0; j < 16; j++) acc[i][j] = 0.0f;
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < 16; j++) acc[i][j] += x[i * ldx + k] * wp[k * ldw + j];
    }
#endif
    for (int i = 0; i < MR; i++)
        for (int64_t j = 0; j < nvalid; j++) {
            float v = acc[i][j] + (bias ? bias[j] : 0.0f);
            y[i * ldy + j] = accumulate ? y[i * ldy + j] + v : v;
        }
}

/* Rows [0, M) of one 16-wide output panel, six at a time. */
static void panel_rows(const float *x, int64_t ldx, int64_t M, int64_t K, const float *wp, int64_t ldw, float *y,
                       int64_t ldy, int64_t nv, const float *b, int accumulate) {
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 6);
    switch (M - m) {
    case 5: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 5); break;
    case 4: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 4); break;
    case 3: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 3); break;
    case 2: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 2); break;
    case 1: panel_kernel(x + m * ldx, ldx, K, wp, ldw, y + m * ldy, ldy, nv, b, accumulate, 1); break;
    }
}

/* softmax(s · scale) of one row, in place. */
static void softmax_row(float *s, int64_t n, float scale) {
    float mx = -INFINITY, total = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        s[j] *= scale;
        mx = s[j] > mx ? s[j] : mx;
    }
    int64_t j = 0;
#ifdef GM_AVX2
    __m256 acc = _mm256_setzero_ps(), vmx = _mm256_set1_ps(mx);
    for (; j + 8 <= n; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
        _mm256_storeu_ps(s + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    total = hsum8(acc);
#endif
    for (; j < n; j++) {
        s[j] = expf(s[j] - mx);
        total += s[j];
    }
    const float inv = 1.0f / total;
    for (j = 0; j < n; j++) s[j] *= inv;
}

/* Bidirectional attention of one head over one sequence of T tokens as small matrix products:
 * S = Q Kᵀ (T × T, register tiles), softmax(S · scale) by rows, O = S V (16-wide panels of V read
 * in place). Q/K/V rows are ld floats apart, O rows ldo; dh must be a multiple of 16. */
static void attend_block(const float *Q, const float *K, const float *V, int64_t ld, int64_t T, int64_t dh,
                         float scale, float *S, float *O, int64_t ldo) {
    linear_rows_ld(Q, ld, T, dh, K, ld, 0, S, T, 0, T, 0);
    for (int64_t i = 0; i < T; i++) softmax_row(S + i * T, T, scale);
    for (int64_t p = 0; p < dh; p += 16) panel_rows(S, T, T, T, V + p, ld, O + p, ldo, 16, 0, 0);
}

/* Inside a parallel region: y (M, N) (+)= x (M, K) · Wᵀ + bias with W packed. Rows go in chunks
 * that stay in L2 while every panel passes over them; (chunk, panel) pairs are split statically. */
static void gemm_team(const float *x, int64_t M, int64_t K, const float *Wp, const float *bias, float *y, int64_t N,
                      int accumulate) {
    const int64_t P = (N + 15) / 16;
    int64_t mc = (49152 / (K > 0 ? K : 1)) / 6 * 6;
    if (mc < 6) mc = 6;
    const int64_t C = (M + mc - 1) / mc;
#pragma omp for schedule(static) collapse(2)
    for (int64_t c = 0; c < C; c++)
        for (int64_t p = 0; p < P; p++) {
            const int64_t m1 = (c + 1) * mc < M ? (c + 1) * mc : M, nv = N - p * 16 < 16 ? N - p * 16 : 16;
            const float *wp = Wp + p * K * 16, *b = bias ? bias + p * 16 : 0;
            int64_t m = c * mc;
            panel_rows(x + m * K, K, m1 - m, K, wp, 16, y + m * N + p * 16, N, nv, b, accumulate);
        }
}

void gm_gemm_packed(const float *x, int64_t M, int64_t K, const float *Wp, const float *bias, float *y, int64_t N,
                    int n_threads) {
#pragma omp parallel num_threads(n_threads)
    gemm_team(x, M, K, Wp, bias, y, N, 0);
}

/* Field order mirrored by ctypes in genmodels/native/encoder.py. Matrices are packed (gm_pack). */
typedef struct {
    const float *norm1_w, *norm1_b, *qkv_wp, *qkv_b, *out_wp, *out_b;
    const float *norm2_w, *norm2_b, *fc1_wp, *fc1_b, *fc2_wp, *fc2_b;
} gm_enc_layer;

typedef struct {
    int64_t n_layers, d, n_heads, n_kv, dh, d_ff, norm, gated, act, post_norm, n_threads;
    double norm_eps, attn_scale, emb_scale;
    const float *embed, *type_table, *pos_table, *emb_norm_w, *emb_norm_b, *final_w, *final_b;
    gm_enc_layer *layers;
} gm_encoder;

int64_t gm_encoder_scratch_floats(const gm_encoder *m, int64_t n_tokens, int64_t max_keys) {
    const int64_t qkv = (m->n_heads + 2 * m->n_kv) * m->dh, ff = (m->gated ? 2 : 1) * m->d_ff;
    return n_tokens * (qkv + m->n_heads * m->dh + 2 * m->d + ff + m->d_ff) + m->n_threads * max_keys * max_keys;
}

/* Hidden states out (N, D) of N packed tokens: ids, token types (or NULL: type 0), positions, and
 * for each token the key range [key_lo, key_hi) of its sequence; the n_seqs sequences themselves
 * start at seq_lo and hold seq_len tokens (at most max_keys). */
int gm_encoder_forward(const gm_encoder *m, const int64_t *ids, const int64_t *types, const int64_t *positions,
                       const int64_t *key_lo, const int64_t *key_hi, const int64_t *seq_lo, const int64_t *seq_len,
                       int64_t n_seqs, int64_t N, int64_t max_keys, float *scratch, float *out) {
    const int64_t D = m->d, H = m->n_heads, HKV = m->n_kv, DH = m->dh, F = m->d_ff;
    const int64_t QKV = (H + 2 * HKV) * DH, FF = (m->gated ? 2 : 1) * F, group = H / HKV;
    const float eps = (float)m->norm_eps, scale = (float)m->attn_scale;
    float *x = out, *qkv = scratch, *att = qkv + N * QKV, *tmp = att + N * H * DH, *xn = tmp + N * D;
    float *ff = xn + N * D, *hid = ff + N * FF, *scores_all = hid + N * F;
#pragma omp parallel num_threads(m->n_threads)
    {
        float *scores = scores_all + thread_id() * max_keys * max_keys;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N; t++) {
            const float *e = m->embed + ids[t] * D;
            const float *ty = m->type_table ? m->type_table + (types ? types[t] : 0) * D : 0;
            const float *p = m->pos_table ? m->pos_table + positions[t] * D : 0;
            float *xt = x + t * D;
            for (int64_t i = 0; i < D; i++) {
                float v = e[i] * (float)m->emb_scale;
                if (ty) v += ty[i];
                if (p) v += p[i];
                xt[i] = v;
            }
            if (m->emb_norm_w) norm_row(xt, xt, D, (int)m->norm, eps, m->emb_norm_w, m->emb_norm_b);
        }
        for (int64_t l = 0; l < m->n_layers; l++) {
            const gm_enc_layer *ly = &m->layers[l];
            const float *a_in = x;
            if (!m->post_norm) {
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) norm_row(x + t * D, xn + t * D, D, (int)m->norm, eps, ly->norm1_w, ly->norm1_b);
                a_in = xn;
            }
            gemm_team(a_in, N, D, ly->qkv_wp, ly->qkv_b, qkv, QKV, 0);
            if (DH % 16 == 0) { /* per (sequence, head): small matrix products */
#pragma omp for schedule(dynamic, 1)
                for (int64_t sh = 0; sh < n_seqs * H; sh++) {
                    const int64_t s = sh / H, h = sh % H, lo = seq_lo[s], kvo = (h / group) * DH;
                    attend_block(qkv + lo * QKV + h * DH, qkv + lo * QKV + H * DH + kvo,
                                 qkv + lo * QKV + (H + HKV) * DH + kvo, QKV, seq_len[s], DH, scale, scores,
                                 att + lo * H * DH + h * DH, H * DH);
                }
            } else { /* per (token, head) */
#pragma omp for schedule(static)
                for (int64_t th = 0; th < N * H; th++) {
                    const int64_t t = th / H, h = th % H, lo = key_lo[t], kvo = (h / group) * DH;
                    attend(qkv + t * QKV + h * DH, qkv + lo * QKV + H * DH + kvo, qkv + lo * QKV + (H + HKV) * DH + kvo,
                           QKV, key_hi[t] - lo, DH, scale, 0, 0, 0.0f, 0, scores, att + (t * H + h) * DH);
                }
            }
            if (m->post_norm) { /* x = Norm1(x + Attn(x)) */
                gemm_team(att, N, H * DH, ly->out_wp, ly->out_b, tmp, D, 0);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) {
                    for (int64_t i = 0; i < D; i++) tmp[t * D + i] += x[t * D + i];
                    norm_row(tmp + t * D, x + t * D, D, (int)m->norm, eps, ly->norm1_w, ly->norm1_b);
                }
            } else { /* x += Attn(Norm1 x); FFN input Norm2(x) */
                gemm_team(att, N, H * DH, ly->out_wp, ly->out_b, x, D, 1);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) norm_row(x + t * D, xn + t * D, D, (int)m->norm, eps, ly->norm2_w, ly->norm2_b);
            }
            gemm_team(m->post_norm ? x : xn, N, D, ly->fc1_wp, ly->fc1_b, ff, FF, 0);
#pragma omp for schedule(static)
            for (int64_t t = 0; t < N; t++) activate(hid + t * F, ff + t * FF, m->gated ? ff + t * FF + F : 0, F, (int)m->act);
            if (m->post_norm) { /* x = Norm2(x + FFN(x)) */
                gemm_team(hid, N, F, ly->fc2_wp, ly->fc2_b, tmp, D, 0);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < N; t++) {
                    for (int64_t i = 0; i < D; i++) tmp[t * D + i] += x[t * D + i];
                    norm_row(tmp + t * D, x + t * D, D, (int)m->norm, eps, ly->norm2_w, ly->norm2_b);
                }
            } else {
                gemm_team(hid, N, F, ly->fc2_wp, ly->fc2_b, x, D, 1);
            }
        }
        if (m->final_w) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < N; t++) norm_row(x + t * D, x + t * D, D, (int)m->norm, eps, m->final_w, m->final_b);
        }
    }
    return 0;
}
