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
typedef __m512 pf_v;
#define pf_load _mm512_loadu_ps
#define pf_store _mm512_storeu_ps
#define pf_set1 _mm512_set1_ps
#define pf_fma _mm512_fmadd_ps
#define pf_add _mm512_add_ps
#define pf_zero _mm512_setzero_ps
#elif defined(GM_AVX2)
typedef __m256 pf_v;
#define pf_load _mm256_loadu_ps
#define pf_store _mm256_storeu_ps
#define pf_set1 _mm256_set1_ps
#define pf_fma _mm256_fmadd_ps
#define pf_add _mm256_add_ps
#define pf_zero _mm256_setzero_ps
#endif
#define PF_MIN_ROWS 24 /* below: any_linear_team */

/* floats of one thread's packing buffers for M rows (A slivers, the B panel, the panel's dequantised rows, the
 * panel in bf16: gemm_bf16.c) */
int64_t gemm_pack_floats(int64_t M) {
    const int64_t slivers = (M + PF_MR - 1) / PF_MR;
    return (slivers * PF_MR * PF_KC + 2 * PF_KC * PF_NR + PF_KC * PF_NR / 2 + 63) / 16 * 16; /* + bf16 panel */
}

/* Values per K-block: K split evenly into blocks of at most PF_KC, each a multiple of 16 (fp32) or of the
 * format's block (32 values, 256 for the K formats). */
int64_t gemm_k_block(int64_t K, int64_t type) {
    const int64_t g = type == GM_F32 ? 16 : quant_block_values(type), nb = (K + PF_KC - 1) / PF_KC;
    const int64_t kc = ((K + nb - 1) / nb + g - 1) / g * g;
    return kc <= PF_KC ? kc : PF_KC / g * g;
}

/* y[0:rows, 0:cols] (ld ldy) = (add ? y : 0) + t + bias, t an MR × NR tile */
void gemm_store_tile(const float *t, float *y, int64_t ldy, int64_t rows, int64_t cols, const float *bias,
                       int add) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const float v = t[i * PF_NR + j] + (bias ? bias[j] : 0.0f);
            y[i * ldy + j] = add ? y[i * ldy + j] + v : v;
        }
}

/* y[0:rows, 0:cols] (+)= Σ_k a[k][0:MR] ⊗ b[k][0:NR] (+ bias) over kc steps, b's rows ldb apart: a full tile straight from the
 * registers, a partial one through store_tile */
static void micro(const float *restrict a, const float *restrict b, int64_t ldb, int64_t kc, float *y, int64_t ldy,
                  int64_t rows, int64_t cols, const float *bias, int add) {
    float t[PF_MR * PF_NR] __attribute__((aligned(64)));
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
#define PF_Y(i)                                                                                           \
    {                                                                                                     \
        float *yr = y + (i) * ldy;                                                                        \
        pf_v v0 = c##i##0, v1 = c##i##1;                                                                  \
        if (bias) v0 = pf_add(v0, pf_load(bias)), v1 = pf_add(v1, pf_load(bias + PF_VW));                 \
        if (add) v0 = pf_add(v0, pf_load(yr)), v1 = pf_add(v1, pf_load(yr + PF_VW));                      \
        pf_store(yr, v0), pf_store(yr + PF_VW, v1);                                                       \
    }
    PF_ROWS(PF_DECL)
    for (int64_t k = 0; k < kc; k++, a += PF_MR, b += ldb) {
        const pf_v b0 = pf_load(b), b1 = pf_load(b + PF_VW);
        PF_ROWS(PF_FMA)
    }
    if (rows == PF_MR && cols == PF_NR) {
        PF_ROWS(PF_Y)
        return;
    }
    PF_ROWS(PF_OUT)
#undef PF_ROW
#undef PF_ROWS
#undef PF_DECL
#undef PF_FMA
#undef PF_OUT
#undef PF_Y
#else
    for (int i = 0; i < PF_MR * PF_NR; i++) t[i] = 0.0f;
    for (int64_t k = 0; k < kc; k++, a += PF_MR, b += ldb)
        for (int i = 0; i < PF_MR; i++)
            for (int j = 0; j < PF_NR; j++) t[i * PF_NR + j] += a[i] * b[j];
#endif
    gemm_store_tile(t, y, ldy, rows, cols, bias, add);
}

/* Sliver s of rows [0, M), columns [k0, k0 + kc) of x, rows past M zero: ap[s][k][MR]. */
static void pack_a(const float *x, int64_t ldx, int64_t M, int64_t k0, int64_t kc, int64_t s, float *ap) {
    const float *src[PF_MR];
    float *dst = ap + s * PF_MR * kc;
    const int64_t rows = M - s * PF_MR < PF_MR ? M - s * PF_MR : PF_MR;
    for (int i = 0; i < PF_MR; i++) src[i] = x + (s * PF_MR + (i < rows ? i : 0)) * ldx + k0;
    for (int64_t k = 0; k < kc; k++, dst += PF_MR)
        for (int i = 0; i < PF_MR; i++) dst[i] = i < rows ? src[i][k] : 0.0f;
}

/* The panel of W rows [n0, n0 + nv) (columns past nv zero), values [k0, k0 + kc), as bp[k][NR]; a quantised
 * W's rows are dequantised into `rows` (NR × kc) first. */
void gemm_pack_b(const void *W, int64_t type, int64_t K, int64_t n0, int64_t nv, int64_t k0, int64_t kc,
                   float *bp, float *rows) {
    const int64_t row_bytes = type == GM_F32 ? K * 4 : K / quant_block_values(type) * quant_block_bytes(type);
    const float *src[PF_NR];
    for (int64_t j = 0; j < PF_NR; j++) {
        const int64_t n = n0 + (j < nv ? j : 0);
        if (type == GM_F32) {
            src[j] = (const float *)W + n * K + k0;
        } else {
            src[j] = rows + j * kc;
            if (j < nv) quant_dequant_span((const uint8_t *)W + n * row_bytes, type, k0, k0 + kc, rows + j * kc);
        }
    }
    int64_t k = 0;
#ifdef GM_AVX2
    if (nv == PF_NR) /* 8 × 8 blocks transposed in registers */
        for (; k + 8 <= kc; k += 8)
            for (int64_t j = 0; j < PF_NR; j += 8) gemm_transpose8(src + j, k, bp + k * PF_NR + j, PF_NR);
#endif
    for (bp += k * PF_NR; k < kc; k++, bp += PF_NR)
        for (int64_t j = 0; j < PF_NR; j++) bp[j] = j < nv ? src[j][k] : 0.0f;
}

/* Columns of panels [p0, p1) of y (M, N) (+)= x (M, K) · Wᵀ + bias, rows ldx / ldy apart, W fp32 (type 0, rows K
 * apart) or blocks of `type`, products in fp32 (bf16: gemm_bf16.c's); mine: gemm_pack_floats(M) floats. One thread
 * (each thread of a team packs all of x's slivers itself: sharing them costs a barrier per K-block, which on a
 * loaded machine — a thread descheduled — made a 2-thread SmolLM2 prefill 1.7x slower). */
void gemm_panels(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type, const float *bias,
                 float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1, float *mine, int bf16,
                 const uint32_t *packed, const gm_fuse *fuse) {
    const int64_t KB = gemm_k_block(K, type), slivers = (M + PF_MR - 1) / PF_MR;
    float *ap = mine, *bp = mine + slivers * PF_MR * PF_KC, *rows = bp + PF_KC * PF_NR;
    for (int64_t k0 = 0; k0 < K && p0 < p1; k0 += KB) {
        const int64_t kc = K - k0 < KB ? K - k0 : KB;
        if (bf16 && fuse && fuse->x_slivers) { /* x's slivers made by the product before (gm_fuse) */
            gemm_bf16_block((const float *)(fuse->x_slivers + slivers * PF_MR * (k0 / 2)), M, K, W, type, k0, kc, bias, y,
                            ldy, N, accumulate, p0, p1, bp, packed, fuse);
            continue;
        }
        for (int64_t s = 0; s < slivers; s++) (bf16 ? gemm_pack_a_bf16 : pack_a)(x, ldx, M, k0, kc, s, ap);
        if (bf16) {
            gemm_bf16_block(ap, M, K, W, type, k0, kc, bias, y, ldy, N, accumulate, p0, p1, bp, packed, fuse);
        } else {
            for (int64_t p = p0; p < p1; p++) {
                const int64_t n0 = p * PF_NR, nv = N - n0 < PF_NR ? N - n0 : PF_NR;
                gemm_pack_b(W, type, K, n0, nv, k0, kc, bp, rows);
                for (int64_t s = 0; s < slivers; s++) {
                    const int64_t m0 = s * PF_MR, rows_s = M - m0 < PF_MR ? M - m0 : PF_MR;
                    micro(ap + s * PF_MR * kc, bp, PF_NR, kc, y + m0 * ldy + n0, ldy, rows_s, nv,
                          k0 == 0 && bias ? bias + n0 : 0, accumulate || k0 > 0);
                }
            }
        }
    }
}

/* One thread: y (M, N) = x (M, K) · V, V (K, N) row-major with rows ldv apart, read in place (N a multiple of
 * gemm_nn_width()); mine: gemm_pack_floats(M) floats. (Attention's P V.) */
void gemm_nn(const float *x, int64_t ldx, int64_t M, int64_t K, const float *V, int64_t ldv, float *y, int64_t ldy,
             int64_t N, float *mine) {
    const int64_t slivers = (M + PF_MR - 1) / PF_MR;
    for (int64_t k0 = 0; k0 < K; k0 += PF_KC) {
        const int64_t kc = K - k0 < PF_KC ? K - k0 : PF_KC;
        for (int64_t s = 0; s < slivers; s++) pack_a(x, ldx, M, k0, kc, s, mine);
        for (int64_t n0 = 0; n0 < N; n0 += PF_NR)
            for (int64_t s = 0; s < slivers; s++) {
                const int64_t m0 = s * PF_MR, rows_s = M - m0 < PF_MR ? M - m0 : PF_MR;
                micro(mine + s * PF_MR * kc, V + k0 * ldv + n0, ldv, kc, y + m0 * ldy + n0, ldy, rows_s, PF_NR, 0,
                      k0 > 0);
            }
    }
}

int64_t gemm_nn_width(void) { return PF_NR; }

int prefill_rows_split(int64_t M, int64_t nt, int bf16, int64_t type, const uint32_t *packed) {
    return bf16 && type == GM_F32 && packed && (M + PF_MR - 1) / PF_MR >= 2 * nt;
}

void prefill_thread_rows(int64_t M, int64_t *m0, int64_t *m1) {
    const int64_t nt = omp_threads(), me = thread_id(), q = (M + 3) / 4;
    *m0 = q * me / nt * 4;
    *m1 = q * (me + 1) / nt * 4 < M ? q * (me + 1) / nt * 4 : M;
}

/* Inside a parallel region (every thread calls it): y (M, N) (+)= x (M, K) · Wᵀ + bias (gemm_panels, the
 * panels split over the team; with W packed once in bf16 (`packed`, gm_pack_bf16) and at least 2 MR-row slivers a
 * thread, x's rows split instead, in fours: each thread converts only its own rows of x and reads every packed panel);
 * pack: gemm_pack_floats(M) floats per thread, thread-major. Ends with the team's barrier. */
int prefill_gemm_team(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                      const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, float *pack, int bf16,
                      const uint32_t *packed, const gm_fuse *fuse) {
    if (M < PF_MIN_ROWS && ldx == K && ldy == N && !bf16) {
        any_linear_team(x, M, K, W, type, bias, y, N, accumulate);
        return 0;
    }
    const int64_t nt = omp_threads(), me = thread_id(), P = (N + PF_NR - 1) / PF_NR;
    float *mine = pack + me * gemm_pack_floats(M);
    packed = bf16 && type == GM_F32 ? packed : 0;
    if (prefill_rows_split(M, nt, bf16, type, packed)) { /* rows split in fours (the bf16 kernels' narrowest tile) */
        int64_t m0, m1;
        prefill_thread_rows(M, &m0, &m1);
        const int64_t at = m0 + PF_MR * me; /* this thread's slivers start at row `at` of K/2 pairs (gm_fuse) */
        const gm_fuse mine_fuse = {fuse && fuse->hid ? fuse->hid + m0 * (N / 2) : 0,
                                   fuse && fuse->hid_slivers ? fuse->hid_slivers + at * (N / 2 / 2) : 0,
                                   fuse && fuse->x_slivers ? fuse->x_slivers + at * (K / 2) : 0};
        gemm_panels(x + m0 * ldx, ldx, m1 - m0, K, W, type, bias, y + m0 * ldy, ldy, N, accumulate, 0, P, mine, 1,
                    packed, fuse ? &mine_fuse : 0);
        if (fuse && fuse->no_barrier) return 1;
#pragma omp barrier
        return 1;
    } else {
        gemm_panels(x, ldx, M, K, W, type, bias, y, ldy, N, accumulate, P * me / nt, P * (me + 1) / nt, mine, bf16,
                    packed, fuse); /* (never slivers here: prefill.c asks prefill_rows_split first) */
    }
#pragma omp barrier
    return 0;
}

/* y (M, N) = x (M, K) · Wᵀ + bias on n_threads threads (for tests and benchmarks), in bf16 when bf16 != 0, W's
 * panels read from `packed` (gm_pack_bf16 of W; bf16 and fp32 W only) when not NULL; -1 for an unknown type or K
 * not a multiple of its block, -3 for bf16 in a build without it, else 0. */
GM_API int gm_prefill_gemm(const float *x, int64_t M, int64_t K, const void *W, int64_t type, const float *bias,
                           float *y, int64_t N, int n_threads, int bf16, const void *packed) {
    if ((type != GM_F32 && !quant_block_bytes(type)) || (type != GM_F32 && K % quant_block_values(type))) return -1;
    if (bf16 && !gemm_bf16_built()) return -3;
    const int nt = n_threads > 0 ? n_threads : 1;
    float *pack = aligned_alloc(64, (size_t)(nt * gemm_pack_floats(M) * 4));
    if (!pack) return -2;
#pragma omp parallel num_threads(nt)
    prefill_gemm_team(x, K, M, K, W, type, bias, y, N, N, 0, pack, bf16, (const uint32_t *)packed, 0);
    free(pack);
    return 0;
}
