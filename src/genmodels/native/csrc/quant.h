/* GGUF block formats read in place by the decode step (quant.c). Type codes are GGML's. */
#ifndef GM_QUANT_H
#define GM_QUANT_H
#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h> /* _cvtsh_ss (F16C, present on CPUs without AVX2 too) */
#endif

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
/* IEEE half -> float (exact; subnormals, infinities and NaN included) */
static inline float half_to_float(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) bits = sign;
    else { /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) man <<= 1, exp--;
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* batch 1 (qgemv.c, AVX2 / AVX-512 builds): xsum[j] = Σ of block j of x (K / 32 sums, for Q4_1's mins), then
 * rows [n0, n1) of y (+)= W x + bias for W in Q8_0, Q4_0 or Q4_1 blocks */
void qgemv_block_sums(const float *x, int64_t K, float *xsum);
void qgemv_rows(const float *x, const float *xsum, int64_t K, const uint8_t *Wq, int64_t type, const float *bias,
                float *y, int64_t n0, int64_t n1, int accumulate);
/* batch 1 with int8 activations (qdot8.c), inside a parallel region: 0 when the mode is fp32 (then qgemv_rows) */
int qdot8_team(const float *x, int64_t K, const uint8_t *W, int64_t type, const float *bias, float *y, int64_t N,
               int accumulate);
#endif
