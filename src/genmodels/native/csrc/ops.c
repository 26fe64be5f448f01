/* Row operations shared by the decoder step and the encoder: norms, activations, attention. */
#include "common.h"

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

/* norm_row's scale r = 1 / √(mean((x − μ)²) + ε) and *mu = μ: x's mean for LayerNorm, 0 for RMSNorm */
float norm_scale(const float *x, int64_t d, int kind, float eps, float *mu) {
    *mu = kind == NORM_RMS ? 0.0f : centred_sum(x, d, 0.0f, 1) / (float)d;
    return 1.0f / sqrtf(centred_sum(x, d, *mu, 2) / (float)d + eps);
}

void norm_row(const float *x, float *y, int64_t d, int kind, float eps, const float *w, const float *b) {
    float mu;
    const float r = norm_scale(x, d, kind, eps, &mu);
    if (kind == NORM_RMS) { /* y = x · rsqrt(mean(x²) + ε) · γ */
        for (int64_t i = 0; i < d; i++) y[i] = x[i] * r * w[i];
        return;
    }
    /* y = (x − μ) / √(σ² + ε) · γ + β */
    if (b)
        for (int64_t i = 0; i < d; i++) y[i] = (x[i] - mu) * r * w[i] + b[i];
    else
        for (int64_t i = 0; i < d; i++) y[i] = (x[i] - mu) * r * w[i];
}

/* Inside a parallel region: y[b] = Norm(x[b]) for b < B rows of d (in place when y == x). */
void norm_rows(const float *x, float *y, int64_t B, int64_t d, int kind, float eps, const float *w,
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
void activate(float *h, const float *g, const float *up, int64_t n, int act) {
    int64_t i = 0;
#ifdef __AVX512F__
    for (; act == ACT_SILU && i + 16 <= n; i += 16) { /* silu16: activation8's operations, 16 lanes (same bits) */
        __m512 a = silu16(_mm512_loadu_ps(g + i));
        if (up) a = _mm512_mul_ps(a, _mm512_loadu_ps(up + i));
        _mm512_storeu_ps(h + i, a);
    }
#endif
#ifdef GM_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256 a = activation8(_mm256_loadu_ps(g + i), act);
        if (up) a = _mm256_mul_ps(a, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(h + i, a);
    }
#endif
    for (; i < n; i++) h[i] = up ? activation(g[i], act) * up[i] : activation(g[i], act);
}

/* p[j] <- exp(p[j] − mx) for j < n (−inf: 0); returns Σ p */
float exp_row(float *p, int64_t n, float mx) {
    int64_t j = 0;
    float total = 0.0f;
#ifdef GM_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
#ifdef __AVX512F__
    const __m512 vmx16 = _mm512_set1_ps(mx), ninf16 = _mm512_set1_ps(-INFINITY);
    for (; j + 16 <= n; j += 16) { /* exp16, each half added to the 8-lane sum in turn: the AVX2 loop's bits */
        const __m512 s = _mm512_loadu_ps(p + j);
        const __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, ninf16, _CMP_GT_OQ), exp16(_mm512_sub_ps(s, vmx16)));
        _mm512_storeu_ps(p + j, e);
        const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)); /* (AVX512F only) */
        acc = _mm256_add_ps(_mm256_add_ps(acc, _mm512_castps512_ps256(e)), hi);
    }
#endif
    for (; j + 8 <= n; j += 8) {
        __m256 s = _mm256_loadu_ps(p + j);
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(s, vmx)), _mm256_cmp_ps(s, ninf, _CMP_GT_OQ));
        _mm256_storeu_ps(p + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    total = hsum8(acc);
#endif
    for (; j < n; j++) {
        p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx);
        total += p[j];
    }
    return total;
}

/* softmax(q·Kᵀ·scale + bias) V for one query head over keys [lo, n_keys) of its KV head; the query
 * sits at n_keys − 1 and bias(j) = slope·(j − q) + dist_bias[q − j] (ALiBi, T5). */
void attend(const float *q, const float *K, const float *V, int64_t ldk, int64_t n_keys, int64_t dh,
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
    for (int64_t i = 0; i < dh; i++) out[i] = 0.0f;
    if (mx == -INFINITY) { /* no visible key: PyTorch's finfo.min mask makes the row uniform over all keys */
        for (int64_t j = 0; j < n_keys; j++)
            for (int64_t i = 0; i < dh; i++) out[i] += V[j * ldk + i];
        for (int64_t i = 0; i < dh; i++) out[i] /= (float)(n_keys > 0 ? n_keys : 1);
        return;
    }
    float total = exp_row(scores + lo, n_keys - lo, mx);
    int64_t j;
    for (j = lo; j < n_keys; j++) {
        const float p = scores[j];
        if (p == 0.0f) continue;
        const float *v = V + j * ldk;
        for (int64_t i = 0; i < dh; i++) out[i] += p * v[i];
    }
    float inv = 1.0f / total;
    for (int64_t i = 0; i < dh; i++) out[i] *= inv;
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
void attend_block(const float *Q, const float *K, const float *V, int64_t ld, int64_t T, int64_t dh,
                         float scale, float *S, float *O, int64_t ldo) {
    linear_rows_ld(Q, ld, T, dh, K, ld, 0, S, T, 0, T, 0);
    for (int64_t i = 0; i < T; i++) softmax_row(S + i * T, T, scale);
    for (int64_t p = 0; p < dh; p += 16) panel_rows(S, T, T, T, V + p, ld, O + p, ldo, 16, 0, 0);
}
