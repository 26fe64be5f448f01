/* The prefill's packed matrix products (gemm.c), used by prefill.c. */
#ifndef GM_PREFILL_H
#define GM_PREFILL_H
#include <stdint.h>

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
#define PF_KC 384 /* most values of a K-block (a product's blocks are split evenly, whole GGUF blocks) */

/* floats of one thread's packing buffers for a product over M rows */
int64_t gemm_pack_floats(int64_t M);
/* Inside a parallel region, every thread: y (M, N) (+)= x (M, K) · W (N, K)ᵀ + bias, x / y rows ldx / ldy
 * apart, W fp32 (type 0) or GGUF blocks of `type`; pack: gemm_pack_floats(M) floats per thread; bf16: the
 * products in bf16 (gemm_bf16.c; only where gemm_bf16_built()). Ends with the team's barrier. */
void prefill_gemm_team(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                       const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, float *pack, int bf16);
/* One thread: panels [p0, p1) (of gemm_nn_width() columns) of the same product; mine: gemm_pack_floats(M) floats */
void gemm_panels(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type, const float *bias,
                 float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1, float *mine);
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
/* gemm_bf16.c: 1 when built with AVX512-BF16; gemm_panels with bf16 products (gemm_panels where not built) */
int gemm_bf16_built(void);
void gemm_panels_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                      const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1,
                      float *mine);
#endif
