/* The prefill's matrix products: y (M, N) (+)= x (M, K) · W (N, K)ᵀ + bias for many rows (a prompt), with
 * W in PyTorch's layout (fp32) or GGUF blocks (quant.h), read in place — no second copy of the model.
 *
 * Blocked as GotoBLAS / BLIS do (Goto & van de Geijn, "Anatomy of high-performance matrix
 * multiplication", TOMS 2008): for each K-block of KC values, every thread packs
 *   A: the rows of x into MR-row slivers  Ap[s][k][MR]   (kept in L2 while the panels pass),
 *   B: one NR-wide panel of W             Bp[k][NR]      (in L1; a quantised W is dequantised here,
 *                                                         so its product is the fp32 one up to order)
 * and a register-blocked micro-kernel adds the MR × NR tile Ap[s] · Bp to y. The threads split W's
 * panels (each packs x itself: M·KC copies against M·KC·N/threads FMAs). Tile widths follow the
 * build's vector unit (-march=native): AVX-512 MR 12 × NR 32 (24 zmm accumulators), AVX2 6 × 16
 * (12 ymm), else a plain C 4 × 16. Fewer than PF_MIN_ROWS rows take the decode step's unpacked dot
 * tiles (any_linear_team), where packing would not pay.
 */
#include <stdlib.h>

#include "common.h"
#include "prefill.h"
#include "quant.h"

#if defined(__AVX512F__)
#define PF_MR 12
#define PF_VW 16
typedef __m512 pf_v;
#define pf_load _mm512_loadu_ps
#define pf_store _mm512_storeu_ps
#define pf_set1 _mm512_set1_ps
#define pf_fma _mm512_fmadd_ps
#define pf_zero _mm512_setzero_ps
#elif defined(GM_AVX2)
#define PF_MR 6
#define PF_VW 8
typedef __m256 pf_v;
#define pf_load _mm256_loadu_ps
#define pf_store _mm256_storeu_ps
#define pf_set1 _mm256_set1_ps
#define pf_fma _mm256_fmadd_ps
#define pf_zero _mm256_setzero_ps
#else
#define PF_MR 4
#define PF_VW 8
#endif
#define PF_NR (2 * PF_VW)
#define PF_KC 256      /* multiple of 256: a K-block holds whole GGUF blocks and super-blocks */
#define PF_MIN_ROWS 24 /* below: any_linear_team */

/* floats of one thread's packing buffers for M rows (A slivers, the B panel, one dequantised row) */
int64_t gemm_pack_floats(int64_t M) {
    const int64_t slivers = (M + PF_MR - 1) / PF_MR;
    return (slivers * PF_MR * PF_KC + PF_KC * PF_NR + PF_KC + 63) / 16 * 16;
}

/* t (MR × NR) = Σ_k a[k][0:MR] ⊗ b[k][0:NR] over kc steps */
static void micro(const float *restrict a, const float *restrict b, int64_t kc, float *restrict t) {
#if defined(__AVX512F__) || defined(GM_AVX2)
#define PF_ROW(X) X(0) X(1) X(2) X(3) X(4) X(5)
#if PF_MR == 12
#define PF_ROWS(X) PF_ROW(X) X(6) X(7) X(8) X(9) X(10) X(11)
#else
#define PF_ROWS(X) PF_ROW(X)
#endif
#define PF_DECL(i) pf_v c##i##0 = pf_zero(), c##i##1 = pf_zero();
#define PF_FMA(i)                                                                                         \
    {                                                                                                     \
        const pf_v ai = pf_set1(a[i]);                                                                    \
        c##i##0 = pf_fma(ai, b0, c##i##0);                                                                \
        c##i##1 = pf_fma(ai, b1, c##i##1);                                                                \
    }
#define PF_OUT(i) pf_store(t + (i) * PF_NR, c##i##0), pf_store(t + (i) * PF_NR + PF_VW, c##i##1);
    PF_ROWS(PF_DECL)
    for (int64_t k = 0; k < kc; k++, a += PF_MR, b += PF_NR) {
        const pf_v b0 = pf_load(b), b1 = pf_load(b + PF_VW);
        PF_ROWS(PF_FMA)
    }
    PF_ROWS(PF_OUT)
#undef PF_ROW
#undef PF_ROWS
#undef PF_DECL
#undef PF_FMA
#undef PF_OUT
#else
    for (int i = 0; i < PF_MR * PF_NR; i++) t[i] = 0.0f;
    for (int64_t k = 0; k < kc; k++, a += PF_MR, b += PF_NR)
        for (int i = 0; i < PF_MR; i++)
            for (int j = 0; j < PF_NR; j++) t[i * PF_NR + j] += a[i] * b[j];
#endif
}

/* Slivers of rows [0, M), columns [k0, k0 + kc) of x, rows past M zero. */
static void pack_a(const float *x, int64_t ldx, int64_t M, int64_t k0, int64_t kc, float *ap) {
    for (int64_t s = 0; s * PF_MR < M; s++) {
        float *dst = ap + s * PF_MR * kc;
        for (int i = 0; i < PF_MR; i++) {
            const int64_t m = s * PF_MR + i;
            if (m < M) {
                const float *src = x + m * ldx + k0;
                for (int64_t k = 0; k < kc; k++) dst[k * PF_MR + i] = src[k];
            } else {
                for (int64_t k = 0; k < kc; k++) dst[k * PF_MR + i] = 0.0f;
            }
        }
    }
}

/* The panel of W rows [n0, n0 + nv) (columns past nv zero), values [k0, k0 + kc), as Bp[k][NR]. */
static void pack_b(const void *W, int64_t type, int64_t K, int64_t n0, int64_t nv, int64_t k0, int64_t kc,
                   float *bp, float *row) {
    const int64_t row_bytes = type == GM_F32 ? K * 4 : K / quant_block_values(type) * quant_block_bytes(type);
    for (int64_t j = 0; j < PF_NR; j++) {
        const float *src = row;
        if (j >= nv) {
            for (int64_t k = 0; k < kc; k++) bp[k * PF_NR + j] = 0.0f;
            continue;
        }
        if (type == GM_F32) src = (const float *)W + (n0 + j) * K + k0;
        else quant_dequant_span((const uint8_t *)W + (n0 + j) * row_bytes, type, k0, k0 + kc, row);
        for (int64_t k = 0; k < kc; k++) bp[k * PF_NR + j] = src[k];
    }
}

/* y[0:rows, 0:cols] (ld ldy) = (add ? y : 0) + t + bias */
static void store_tile(const float *t, float *y, int64_t ldy, int64_t rows, int64_t cols, const float *bias,
                       int add) {
    for (int64_t i = 0; i < rows; i++) {
        float *yr = y + i * ldy;
        const float *tr = t + i * PF_NR;
        if (add && bias)
            for (int64_t j = 0; j < cols; j++) yr[j] += tr[j] + bias[j];
        else if (add)
            for (int64_t j = 0; j < cols; j++) yr[j] += tr[j];
        else if (bias)
            for (int64_t j = 0; j < cols; j++) yr[j] = tr[j] + bias[j];
        else
            for (int64_t j = 0; j < cols; j++) yr[j] = tr[j];
    }
}

/* Inside a parallel region (every thread calls it): y (M, N) (+)= x (M, K) · Wᵀ + bias, rows ldx / ldy
 * apart, W fp32 (type 0) or blocks of `type`; pack: gemm_pack_floats(M) floats per thread, thread-major.
 * Ends with the team's barrier. */
void prefill_gemm_team(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                       const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, float *pack) {
    if (M < PF_MIN_ROWS && ldx == K && ldy == N) {
        any_linear_team(x, M, K, W, type, bias, y, N, accumulate);
        return;
    }
    const int64_t nt = omp_threads(), me = thread_id(), P = (N + PF_NR - 1) / PF_NR;
    const int64_t p0 = P * me / nt, p1 = P * (me + 1) / nt, slivers = (M + PF_MR - 1) / PF_MR;
    float *ap = pack + me * gemm_pack_floats(M), *bp = ap + slivers * PF_MR * PF_KC, *row = bp + PF_KC * PF_NR;
    float tile[PF_MR * PF_NR] __attribute__((aligned(64)));
    for (int64_t k0 = 0; k0 < K && p0 < p1; k0 += PF_KC) {
        const int64_t kc = K - k0 < PF_KC ? K - k0 : PF_KC;
        pack_a(x, ldx, M, k0, kc, ap);
        for (int64_t p = p0; p < p1; p++) {
            const int64_t n0 = p * PF_NR, nv = N - n0 < PF_NR ? N - n0 : PF_NR;
            pack_b(W, type, K, n0, nv, k0, kc, bp, row);
            for (int64_t s = 0; s < slivers; s++) {
                const int64_t m0 = s * PF_MR, rows = M - m0 < PF_MR ? M - m0 : PF_MR;
                micro(ap + s * PF_MR * kc, bp, kc, tile);
                store_tile(tile, y + m0 * ldy + n0, ldy, rows, nv, k0 == 0 && bias ? bias + n0 : 0,
                           accumulate || k0 > 0);
            }
        }
    }
#pragma omp barrier
}

/* y (M, N) = x (M, K) · Wᵀ + bias on n_threads threads (for tests and benchmarks); -1 for an unknown
 * type or K not a multiple of its block, else 0. */
GM_API int gm_prefill_gemm(const float *x, int64_t M, int64_t K, const void *W, int64_t type, const float *bias,
                           float *y, int64_t N, int n_threads) {
    if ((type != GM_F32 && !quant_block_bytes(type)) || (type != GM_F32 && K % quant_block_values(type))) return -1;
    const int nt = n_threads > 0 ? n_threads : 1;
    float *pack = aligned_alloc(64, (size_t)(nt * gemm_pack_floats(M) * 4));
    if (!pack) return -2;
#pragma omp parallel num_threads(nt)
    prefill_gemm_team(x, K, M, K, W, type, bias, y, N, N, 0, pack);
    free(pack);
    return 0;
}
