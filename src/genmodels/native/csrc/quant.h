/* GGUF block formats read in place by the decode step (quant.c). Type codes are GGML's. */
#ifndef GM_QUANT_H
#define GM_QUANT_H
#include <stdint.h>

enum { GM_F32 = 0, GM_Q4_0 = 2, GM_Q4_1 = 3, GM_Q8_0 = 8, GM_Q4_K = 12, GM_Q6_K = 14 };
#define GM_QK 32 /* values per block of Q4_0, Q4_1, Q8_0 */
#define GM_QK_K 256 /* values per super-block of Q4_K, Q6_K */

int64_t quant_block_bytes(int64_t type); /* 0: not a block format */
int64_t quant_block_values(int64_t type); /* 32, or 256 for the K formats */
/* values [k0, k1) (multiples of the block's values) of one row of blocks -> out[0 : k1 − k0] */
void quant_dequant_span(const uint8_t *row, int64_t type, int64_t k0, int64_t k1, float *out);
/* y (M, N) (+)= x (M, K) · W (N, K)ᵀ + bias inside a parallel region; W fp32 (type 0) or blocks of `type`. */
void any_linear_team(const float *x, int64_t M, int64_t K, const void *W, int64_t type, const float *bias, float *y,
                     int64_t N, int accumulate);
#endif
