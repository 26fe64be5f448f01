/* The batched decode step's fp32 products (AVX-512 builds): y (M, N) (+)= x (M, K) · W (N, K)ᵀ + bias for
 * M >= RG_MIN_ROWS input rows, x and W read in place in PyTorch's layout (no packed copy of the model: none
 * is built, ever).
 *
 * The dot tiles of linear.c (common.h tile_dot) widened to 16 lanes: each 512-bit accumulator holds the 8
 * k-lane partial sums of TWO outputs (weight rows n and n + 1 in its halves), each input row's 8 values are
 * broadcast to both halves, so a tile of 6 input rows × 8 weight rows keeps 24 accumulators and spends
 * 6 + 8 loads on 24 FMAs (the 256-bit 4 × 4 dot tile: 8 on 16 half-width ones; a GEMM micro-kernel such as
 * gemm.c's: 14 on 24 — Goto & van de Geijn, TOMS 2008, on why loads per FMA decide it).
 *
 * Summation order: BIT FOR BIT tile_dot's, so an output does not depend on the rows beside it or on which
 * kernel ran it (a greedy request gives the same text alone or batched): lane p of a half sums k ≡ p (mod 8)
 * in order; then hsum8's tree ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7)), done in-register for both
 * halves at once; then the k tail one fmaf a k; then the bias. AVX2 builds (16 registers) and AVX-512 without
 * DQ (Xeon Phi) keep tile_dot.
 */
#include <stdlib.h>

#include "common.h"

#ifndef RG_MIN_ROWS
#define RG_MIN_ROWS 10 /* fewer input rows: linear.c's dot tiles (8 rows: a tie; -DRG_MIN_ROWS=… to measure it) */
#endif
#define RG_MR 6        /* input rows a tile */
#define RG_NB 8        /* weight rows a tile (4 pairs); also a thread's unit of work */
#if defined(__AVX512F__) && defined(__AVX512DQ__) /* the 256-bit halves' broadcast / insert / extract are DQ's */
#define RG_BUILT 1
#endif

#ifdef RG_BUILT
/* hsum8's tree in each 256-bit half of v; the sums land in lanes 0 and 8 */
INLINE __m512 rg_hsum_halves(__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1))); /* a[j] + a[j + 4] */
    v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));      /* (0 + 2), (1 + 3) */
    return _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));   /* (0 + 1) */
}

/* a + b on 128-bit quarters [a.q0, a.q2, b.q0, b.q2] + [a.q1, a.q3, b.q1, b.q3]: hsum8's lo + hi for 4 outputs */
INLINE __m512 rg_fold4(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Rows i and i + 1 of a full tile (accumulators a[0..3], b[0..3]: 16 outputs): hsum8's tree for all 16 at once,
 * each step adding the same two partials in the same order (lo + hi; s0 + s2, s1 + s3; s0 + s1), then
 * y = (accumulate ? y : 0) + (out + bias) as tile_store. */
INLINE void rg_store2(const __m512 *a, const __m512 *b, float *y, int64_t ldy, const float *bias, int accumulate) {
    const __m512 s0 = rg_fold4(a[0], a[1]), s1 = rg_fold4(a[2], a[3]), s2 = rg_fold4(b[0], b[1]), s3 = rg_fold4(b[2], b[3]);
    /* quarter q of s0: the 4 partials of a's output q; of s1: output 4 + q (b likewise) */
    const __m512 u0 = _mm512_add_ps(_mm512_shuffle_ps(s0, s1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(s0, s1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 u1 = _mm512_add_ps(_mm512_shuffle_ps(s2, s3, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(s2, s3, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
    /* lane 4q: a's output q, 4q + 1: a's 4 + q, 4q + 2: b's q, 4q + 3: b's 4 + q -> a's 0..7 | b's 0..7 */
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256 bv = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    __m512 v = _mm512_add_ps(_mm512_permutexvar_ps(order, r), _mm512_insertf32x8(_mm512_castps256_ps512(bv), bv, 1));
    if (accumulate)
        v = _mm512_add_ps(_mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(y)), _mm256_loadu_ps(y + ldy), 1), v);
    _mm256_storeu_ps(y, _mm512_castps512_ps256(v));
    _mm256_storeu_ps(y + ldy, _mm512_extractf32x8_ps(v, 1));
}

/* y[i, 2j + h] (+)= x[i] · w[2j + h] (+ bias) for i < MR, 2j + h < nw (≤ 2P weight rows ldw apart; a missing
 * odd row reads row nw − 1 again and is not stored). MR and P are constants at each call site. */
INLINE void rg_tile(const float *x, int64_t ldx, const float *w, int64_t ldw, int64_t K, const int MR, const int P,
                    int64_t nw, float *y, int64_t ldy, const float *bias, int accumulate) {
    const float *wr[2 * 4];
    for (int j = 0; j < 2 * P; j++) wr[j] = w + (j < nw ? j : nw - 1) * ldw;
#define RG_DECL(i) __m512 a##i##0 = _mm512_setzero_ps(), a##i##1 = a##i##0, a##i##2 = a##i##0, a##i##3 = a##i##0;
#define RG_ROW(i)                                                                                        \
    if (MR > i) {                                                                                        \
        const __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + i * ldx + k));                      \
        a##i##0 = _mm512_fmadd_ps(xv, w0, a##i##0);                                                      \
        if (P > 1) a##i##1 = _mm512_fmadd_ps(xv, w1, a##i##1);                                           \
        if (P > 2) a##i##2 = _mm512_fmadd_ps(xv, w2, a##i##2);                                           \
        if (P > 3) a##i##3 = _mm512_fmadd_ps(xv, w3, a##i##3);                                           \
    }
#define RG_PAIR(j) _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(wr[2 * j] + k)), _mm256_loadu_ps(wr[2 * j + 1] + k), 1)
    RG_DECL(0) RG_DECL(1) RG_DECL(2) RG_DECL(3) RG_DECL(4) RG_DECL(5)
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if ((k & 15) == 0) /* the next tile's weight rows, while this one computes (a hint; ignored past W): +15-30% */
            for (int j = 0; j < 2 * P; j++) _mm_prefetch((const char *)(w + (2 * P + j) * ldw + k), _MM_HINT_T0);
        __m512 w0 = RG_PAIR(0), w1 = w0, w2 = w0, w3 = w0;
        if (P > 1) w1 = RG_PAIR(1);
        if (P > 2) w2 = RG_PAIR(2);
        if (P > 3) w3 = RG_PAIR(3);
        RG_ROW(0) RG_ROW(1) RG_ROW(2) RG_ROW(3) RG_ROW(4) RG_ROW(5)
    }
    const __m512 acc[6][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23},
                              {a30, a31, a32, a33}, {a40, a41, a42, a43}, {a50, a51, a52, a53}};
#undef RG_DECL
#undef RG_ROW
#undef RG_PAIR
    int i = 0;
    if (P == 4 && nw == 8 && k == K) /* a full tile without a k tail: two rows' 16 outputs at a time in vectors */
        for (; i + 1 < MR; i += 2) rg_store2(acc[i], acc[i + 1], y + i * ldy, ldy, bias, accumulate);
    for (; i < MR; i++)
        for (int j = 0; j < P; j++) {
            float t[16] __attribute__((aligned(64)));
            _mm512_store_ps(t, rg_hsum_halves(acc[i][j]));
            for (int h = 0; h < 2 && 2 * j + h < nw; h++) {
                const float *wk = wr[2 * j + h];
                float o = t[8 * h];
                for (int64_t kk = k; kk < K; kk++) o = fmaf(x[i * ldx + kk], wk[kk], o); /* tile_dot's tail */
                const float v = o + (bias ? bias[2 * j + h] : 0.0f);                    /* tile_store's */
                float *yo = y + i * ldy + 2 * j + h;
                *yo = accumulate ? *yo + v : v;
            }
        }
}

#define RG_CASE(MR, P) rg_tile(x, K, w, K, K, MR, P, nw, y, N, b, accumulate)
#define RG_PAIRS(MR)                                                                                     \
    switch ((nw + 1) / 2) {                                                                              \
    case 4: RG_CASE(MR, 4); break;                                                                       \
    case 3: RG_CASE(MR, 3); break;                                                                       \
    case 2: RG_CASE(MR, 2); break;                                                                       \
    default: RG_CASE(MR, 1); break;                                                                      \
    }
/* Weight rows [n0, n1) (at most RG_NB) of the product, for every input row: ⌈M / RG_MR⌉ tiles of as even a
 * height as can be (8 rows: 4 + 4, not 6 + 2 — a 2-row tile spends 10 loads on 8 FMAs). */
static void rg_block(const float *x0, int64_t M, int64_t K, const float *W, const float *bias, float *y0, int64_t N,
                     int64_t n0, int64_t n1, int accumulate) {
    const float *w = W + n0 * K, *b = bias ? bias + n0 : 0;
    const int64_t nw = n1 - n0, tiles = (M + RG_MR - 1) / RG_MR;
    for (int64_t t = 0, m = 0; t < tiles; t++) {
        const int64_t rows = (M - m) / (tiles - t) + ((M - m) % (tiles - t) != 0); /* ⌈rest / tiles left⌉ */
        const float *x = x0 + m * K;
        float *y = y0 + m * N + n0;
        m += rows;
        switch (rows) {
        case 6: RG_PAIRS(6); break;
        case 5: RG_PAIRS(5); break;
        case 4: RG_PAIRS(4); break;
        case 3: RG_PAIRS(3); break;
        case 2: RG_PAIRS(2); break;
        default: RG_PAIRS(1); break;
        }
    }
}
#undef RG_CASE
#undef RG_PAIRS
#endif

/* 1 when this build has the kernel and M rows take it (every thread of a team gets the same answer). */
int rows_gemm_takes(int64_t M) {
#ifdef RG_BUILT
    return M >= RG_MIN_ROWS;
#else
    (void)M;
    return 0;
#endif
}

/* Inside a parallel region (every thread), where rows_gemm_takes(M): the product above, weight-row groups split
 * in blocks of 8 statically over the team (each thread streams one contiguous slab of W). Ends with the team's barrier. */
void rows_gemm_team(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
                    int accumulate) {
#ifdef RG_BUILT
    const int64_t nb = (N + RG_NB - 1) / RG_NB;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++)
        rg_block(x, M, K, W, bias, y, N, b * RG_NB, b * RG_NB + RG_NB < N ? b * RG_NB + RG_NB : N, accumulate);
#else
    (void)x, (void)M, (void)K, (void)W, (void)bias, (void)y, (void)N, (void)accumulate;
    abort(); /* callers ask rows_gemm_takes first */
#endif
}

/* One thread, outside a team: the same product over every group. */
void rows_gemm(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
               int accumulate) {
#ifdef RG_BUILT
    for (int64_t n0 = 0; n0 < N; n0 += RG_NB) rg_block(x, M, K, W, bias, y, N, n0, n0 + RG_NB < N ? n0 + RG_NB : N, accumulate);
#else
    (void)x, (void)M, (void)K, (void)W, (void)bias, (void)y, (void)N, (void)accumulate;
    abort();
#endif
}

/* The threshold in rows (0 where the build has no such kernel), for tests and benchmarks. */
GM_API int64_t gm_rows_gemm_min(void) { return rows_gemm_takes(1 << 30) ? RG_MIN_ROWS : 0; }
