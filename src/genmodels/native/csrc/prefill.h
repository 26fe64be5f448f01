/* The prefill's packed matrix products (gemm.c), used by prefill.c. */
#ifndef GM_PREFILL_H
#define GM_PREFILL_H
#include <stdint.h>

/* floats of one thread's packing buffers for a product over M rows */
int64_t gemm_pack_floats(int64_t M);
/* Inside a parallel region, every thread: y (M, N) (+)= x (M, K) · W (N, K)ᵀ + bias, x / y rows ldx / ldy
 * apart, W fp32 (type 0) or GGUF blocks of `type`; pack: gemm_pack_floats(M) floats per thread. Ends
 * with the team's barrier. */
void prefill_gemm_team(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                       const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, float *pack);
/* One thread: panels [p0, p1) (of gemm_nn_width() columns) of the same product; mine: gemm_pack_floats(M) floats */
void gemm_panels(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type, const float *bias,
                 float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1, float *mine);
/* One thread: y (M, N) = x (M, K) · V (K, N), V's rows ldv apart, N a multiple of gemm_nn_width() */
void gemm_nn(const float *x, int64_t ldx, int64_t M, int64_t K, const float *V, int64_t ldv, float *y, int64_t ldy,
             int64_t N, float *mine);
int64_t gemm_nn_width(void); /* the tiles' width NR */
#endif
