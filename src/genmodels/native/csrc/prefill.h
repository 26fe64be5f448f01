/* The prefill's packed matrix products (gemm.c), used by prefill.c. */
#ifndef GM_PREFILL_H
#define GM_PREFILL_H
#include <stdint.h>

#include "common.h"

/* Tile widths follow the build's vector unit (-march=native): AVX-512 MR 12 × NR 32, AVX2 6 × 16, else 4 × 16 */
#if defined(__AVX512F__)
#define PF_MR 12
#define PF_VW 16
#elif defined(__AVX2__) && defined(__FMA__)
#define PF_MR 6
#define PF_VW 8
#else
#define PF_MR 4
#define PF_VW 8
#endif
#define PF_NR (2 * PF_VW)
#define PF_PACKED 5 /* gm_decoder_prefill's packed pointers per layer: qkv, out, fc1, fc2, fc1 gated (prefill.c) */
#define PF_KC 384 /* most values of a K-block (a product's blocks are split evenly, whole GGUF blocks) */

/* What a bf16 product with W packed once may do besides y (prefill_gemm_team's `fuse`, NULL: nothing):
 *   hid:         a gated MLP's fc1 (packed by gm_pack_bf16_gated, no bias): SiLU(gate) · up (M, N/2) written on the last
 *                K-block instead of y;
 *   hid_slivers: or the same values as the bf16 slivers the next product (K = N/2) reads as x (x_slivers);
 *   x_slivers:   x already as those slivers: not read or converted again;
 *   no_barrier:  where rows are split, end without the team's barrier: the caller reads only this thread's rows
 *                (prefill_thread_rows) of y / hid until it synchronises.
 * Slivers: per thread (the row split of prefill_rows_split, rows [m0, m1)), from u32 (m0 + MR · thread) · K/2 on, every
 * K-block of gemm_k_block(K) in turn (block b at slivers · MR · k0_b/2), each Ap[s][kc/2][MR] as gemm_pack_a_bf16 makes
 * it (rows past m1 zero). */
typedef struct {
    float *hid;
    uint32_t *hid_slivers;
    const uint32_t *x_slivers;
    int no_barrier;
} gm_fuse;

/* floats of one thread's packing buffers for a product over M rows */
int64_t gemm_pack_floats(int64_t M);
/* Inside a parallel region, every thread: y (M, N) (+)= x (M, K) · W (N, K)ᵀ + bias, x / y rows ldx / ldy
 * apart, W fp32 (type 0) or GGUF blocks of `type`; pack: gemm_pack_floats(M) floats per thread; bf16: the
 * products in bf16 (gemm_bf16.c; only where gemm_bf16_built()), W's panels read from `packed` (gm_pack_bf16's
 * layout; fp32 W) when not NULL; fuse: NULL, or what gm_fuse says (its slivers only where prefill_rows_split).
 * Ends with the team's barrier (but see gm_fuse's no_barrier). Returns 1 when it split the rows, else 0. */
int prefill_gemm_team(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                      const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, float *pack, int bf16,
                      const uint32_t *packed, const gm_fuse *fuse);
/* Whether prefill_gemm_team splits x's rows (in fours) over a team of nt threads rather than W's panels: W packed
 * once (fp32 W, bf16) and at least two MR-row slivers a thread. */
int prefill_rows_split(int64_t M, int64_t nt, int bf16, int64_t type, const uint32_t *packed);
void prefill_thread_rows(int64_t M, int64_t *m0, int64_t *m1); /* this thread's rows [m0, m1) of that split */
/* This thread's rows of Norm(x) (M, K) without bias — norm_row's values (x − μ) · r · γ — written as gm_fuse's
 * x_slivers for a product over K (a bf16 build only; prefill_rows_split must hold for that product) */
void prefill_norm_slivers(const float *x, int64_t M, int64_t K, int kind, float eps, const float *w, uint32_t *xs);
/* One thread: panels [p0, p1) (of gemm_nn_width() columns) of the same product; mine: gemm_pack_floats(M) floats;
 * bf16: products in bf16 (gemm_bf16.c, where built), from `packed` panels when not NULL */
void gemm_panels(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type, const float *bias,
                 float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1, float *mine, int bf16,
                 const uint32_t *packed, const gm_fuse *fuse);
/* One thread: y (M, N) = x (M, K) · V (K, N), V's rows ldv apart, N a multiple of gemm_nn_width() */
void gemm_nn(const float *x, int64_t ldx, int64_t M, int64_t K, const float *V, int64_t ldv, float *y, int64_t ldy,
             int64_t N, float *mine);
int64_t gemm_nn_width(void); /* the tiles' width NR */
/* gemm.c's pieces gemm_bf16.c shares: K-block length, the fp32 B panel bp[k][NR] (quantised W dequantised via
 * `rows`), a partial tile's store */
int64_t gemm_k_block(int64_t K, int64_t type);
void gemm_pack_b(const void *W, int64_t type, int64_t K, int64_t n0, int64_t nv, int64_t k0, int64_t kc, float *bp,
                 float *rows);
void gemm_store_tile(const float *t, float *y, int64_t ldy, int64_t rows, int64_t cols, const float *bias, int add);
/* gemm_bf16.c: 1 when built with AVX512-BF16 (else 0, and the two below are never called); sliver s of x's
 * rows [0, M) × values [k0, k0 + kc) as bf16 pairs; panels [p0, p1) of one K-block in bf16 (mine: the thread's
 * room after the A slivers) */
int gemm_bf16_built(void);
void gemm_pack_a_bf16(const float *x, int64_t ldx, int64_t M, int64_t k0, int64_t kc, int64_t s, float *ap);
void gemm_nn_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, const float *V, int64_t ldv, float *y,
                  int64_t ldy, int64_t N, float *mine); /* gemm_nn in bf16 */
void gemm_bf16_block(const float *ap, int64_t M, int64_t K, const void *W, int64_t type, int64_t k0, int64_t kc,
                     const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1,
                     float *mine, const uint32_t *packed, const gm_fuse *fuse);
/* W (N, K) fp32 packed once in bf16 panels (gm_pack_bf16): its size in u32 pairs, one thread's panels [p0, p1) */
int64_t gemm_bf16_packed_pairs(int64_t N, int64_t K);
void gemm_bf16_pack(const float *W, int64_t N, int64_t K, uint32_t *out, int64_t p0, int64_t p1, int64_t half);
#ifdef GM_AVX2
/* c[i] = lane i of r[0..7] (an 8 × 8 transpose in registers; r is overwritten) */
static inline void gemm_transpose8_regs(__m256 r[8], __m256 c[8]) {
    __m256 t[8];
    for (int j = 0; j < 8; j += 2) t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]), t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
    for (int j = 0; j < 8; j += 4)
        for (int h = 0; h < 2; h++) {
            r[j + h] = _mm256_shuffle_ps(t[j + h], t[j + h + 2], _MM_SHUFFLE(1, 0, 1, 0));
            r[j + h + 2] = _mm256_shuffle_ps(t[j + h], t[j + h + 2], _MM_SHUFFLE(3, 2, 3, 2));
        }
    /* r[0] = rows 0-3 of k+0 | k+4, r[2] = k+1 | k+5, r[1] = k+2 | k+6, r[3] = k+3 | k+7 (and r[4..7] rows 4-7) */
    const int order[4] = {0, 2, 1, 3};
    for (int i = 0; i < 4; i++) {
        const __m256 lo = r[order[i]], hi = r[order[i] + 4];
        c[i] = _mm256_permute2f128_ps(lo, hi, 0x20), c[i + 4] = _mm256_permute2f128_ps(lo, hi, 0x31);
    }
}

/* out[i · ldo + j] = src[j][k + i] for i, j < 8 */
static inline void gemm_transpose8(const float *const *src, int64_t k, float *out, int64_t ldo) {
    __m256 r[8], c[8];
    for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src[j] + k);
    gemm_transpose8_regs(r, c);
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(out + i * ldo, c[i]);
}
#endif
#endif
