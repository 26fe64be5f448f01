/* genmodels native CPU kernels: shared definitions (see linear.c, ops.c, decoder.c, encoder.c).
 *
 * Compiled on first use by genmodels/native/__init__.py (cc -O3 -march=native -fopenmp, all .c
 * files of this folder into one shared library) and called through ctypes; no Python or PyTorch
 * headers. All tensors are fp32, contiguous, row-major, PyTorch's layouts: a linear weight is
 * W (N, K) and y = x Wᵀ + b.
 *
 * Why: a batch-1..16 decode step is a chain of matrix-vector products whose weights stream from
 * DRAM, plus ~150 tiny tensor ops; a one-sentence encoder forward is a chain of small-M matrix
 * products. Here a whole decode step or encoder forward runs in one OpenMP region with no per-op
 * dispatch, on register-blocked kernels. The arithmetic is the model's, in fp32; only summation
 * orders differ from PyTorch's kernels (≈1e-6 relative). The PyTorch path stays the reference
 * (tests hold them equal); genmodels falls back to it whenever this library cannot be built.
 */
#ifndef GM_COMMON_H
#define GM_COMMON_H
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
/* the ctypes entry points; everything else stays inside the library (built with -fvisibility=hidden) */
#define GM_API __attribute__((visibility("default")))

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_RELU = 2, ACT_SILU = 3 };

int thread_id(void);
int omp_threads(void); /* the team's size (1 outside a parallel region) */

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
        /* several input rows (a batched decode step): ask memory for the next tile's weight rows while this
         * tile computes (a hint, ignored past the end of W); M = 8 over SmolLM2's weights: -28% time */
        if (MR > 1 && (k & 15) == 0) {
            _mm_prefetch((const char *)(w + NR * ldw + k), _MM_HINT_T0);
            if (NR > 1) _mm_prefetch((const char *)(w + (NR + 1) * ldw + k), _MM_HINT_T0);
            if (NR > 2) _mm_prefetch((const char *)(w + (NR + 2) * ldw + k), _MM_HINT_T0);
            if (NR > 3) _mm_prefetch((const char *)(w + (NR + 3) * ldw + k), _MM_HINT_T0);
        }
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
    /* the tail: one fused multiply-add a k, spelled out (left to the compiler, x · w + out was contracted to an FMA
     * for some k and not others, differently in each tile shape; rows_gemm.c repeats these sums bit for bit) */
    for (; k < K; k++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) out[i][j] = fmaf(x[i * ldx + k], w[j * ldw + k], out[i][j]);
#else
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i][j] = 0.0f;
    for (; k < K; k++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) out[i][j] += x[i * ldx + k] * w[j * ldw + k];
#endif
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

/* ---------------------------------------------------------------------------------------------
 * Vector math (AVX2): exp as Cephes' expf (range reduction by ln 2, degree-6 polynomial, ≈1 ulp);
 * erf as Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the formula PyTorch's vectorised erf uses.
 */
/* e^x in vectors of any width P (_mm256 / _mm512): the same operations in the same order, lane for lane, so
 * exp8 and exp16 give the same bits (W: the width in the cast intrinsics' names; ROUND: to nearest integer). */
#define GM_DEFINE_EXP(NAME, V, VI, P, W, ROUND)                                                               \
    INLINE V NAME(V x) {                                                                                      \
        /* clamp; operand order lets a NaN through (max/min return their second operand on NaN) */           \
        x = P##_min_ps(P##_set1_ps(88.3762626647949f), P##_max_ps(P##_set1_ps(-87.0f), x));                  \
        V n = ROUND(P##_mul_ps(x, P##_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); \
        V r = P##_fnmadd_ps(n, P##_set1_ps(0.693359375f), x);                                                 \
        r = P##_fnmadd_ps(n, P##_set1_ps(-2.12194440e-4f), r);                                                \
        V y = P##_set1_ps(1.9875691500e-4f);                                                                  \
        y = P##_fmadd_ps(y, r, P##_set1_ps(1.3981999507e-3f));                                                \
        y = P##_fmadd_ps(y, r, P##_set1_ps(8.3334519073e-3f));                                                \
        y = P##_fmadd_ps(y, r, P##_set1_ps(4.1665795894e-2f));                                                \
        y = P##_fmadd_ps(y, r, P##_set1_ps(1.6666665459e-1f));                                                \
        y = P##_fmadd_ps(y, r, P##_set1_ps(5.0000001201e-1f));                                                \
        y = P##_add_ps(P##_fmadd_ps(y, P##_mul_ps(r, r), r), P##_set1_ps(1.0f));                              \
        VI e = P##_slli_epi32(P##_add_epi32(P##_cvtps_epi32(n), P##_set1_epi32(127)), 23);                    \
        return P##_mul_ps(y, P##_castsi##W##_ps(e));                                                          \
    }

#ifdef GM_AVX2
GM_DEFINE_EXP(exp8, __m256, __m256i, _mm256, 256, _mm256_round_ps)

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

#ifdef __AVX512F__
/* exp8 and SiLU in 512-bit vectors: the same operations in the same order, lane for lane, so the same bits. */
GM_DEFINE_EXP(exp16, __m512, __m512i, _mm512, 512, _mm512_roundscale_ps)

INLINE __m512 silu16(__m512 v) { /* x / (1 + e^{−x}), as activation8's SiLU */
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
}
#endif

/* ---------------------------------------------------------------------------------------------
 * Packed panels (encoder GEMMs): W (N, K) repacked once as Wp (⌈N/16⌉, K, 16), the 16 outputs of
 * a panel contiguous for each k. The micro-kernel keeps a 6 × 16 block of outputs in twelve AVX
 * registers and, for each k, broadcasts six inputs against the panel's two vectors.
 */
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

/* linear.c */
void linear_rows_ld(const float *x, int64_t ldx, int64_t M, int64_t K, const float *W, int64_t ldw,
                    const float *bias, float *y, int64_t ldy, int64_t n0, int64_t n1, int accumulate);
void linear_team(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
                 int accumulate);
void panel_rows(const float *x, int64_t ldx, int64_t M, int64_t K, const float *wp, int64_t ldw, float *y,
                int64_t ldy, int64_t nv, const float *b, int accumulate);
void gemm_team(const float *x, int64_t M, int64_t K, const float *Wp, const float *bias, float *y, int64_t N,
               int accumulate);
/* rows_gemm.c: the batched fp32 products of many rows on AVX-512 builds (rows_gemm_takes(M) says whether) */
int rows_gemm_takes(int64_t M);
void rows_gemm_team(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
                    int accumulate);
void rows_gemm(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
               int accumulate);
/* ops.c */
void norm_row(const float *x, float *y, int64_t d, int kind, float eps, const float *w, const float *b);
float norm_scale(const float *x, int64_t d, int kind, float eps, float *mu); /* norm_row's 1/√(σ² + ε) and μ */
void norm_rows(const float *x, float *y, int64_t B, int64_t d, int kind, float eps, const float *w,
               const float *bias);
void activate(float *h, const float *g, const float *up, int64_t n, int act);
float exp_row(float *p, int64_t n, float mx); /* p[j] <- exp(p[j] − mx), −inf -> 0; returns Σ p */
void attend(const float *q, const float *K, const float *V, int64_t ldk, int64_t n_keys, int64_t dh, float scale,
            const int64_t *key_ok, int64_t lo, float slope, const float *dist_bias, float *scores, float *out);
void attend_block(const float *Q, const float *K, const float *V, int64_t ld, int64_t T, int64_t dh, float scale,
                  float *S, float *O, int64_t ldo);

#endif
