/* The prefill's matrix products in bf16: y (M, N) (+)= bf16(x) (M, K) · bf16(W) (N, K)ᵀ + bias, products of
 * bf16 values summed in fp32 — built only where the compiler targets AVX512-BF16 (-march=native on AMD Zen 4,
 * Intel Cooper Lake / Sapphire Rapids and later); elsewhere gemm_bf16_built() is 0 and the caller refuses.
 *
 * The same blocking as gemm.c (Goto & van de Geijn 2008): per K-block, each thread packs x's rows and one
 * NR-wide panel of W (fp32 or GGUF blocks, dequantised as for fp32), then rounds both to bf16 (round to
 * nearest even, as torch's .bfloat16()) in the layout VDPBF16PS reads — pairs of consecutive k:
 *
 *     Ap[s][k/2][MR][2]     Bp[k/2][NR][2]        (an odd K-block's last pair padded with 0)
 *
 * and the micro-kernel adds, per pair of k, c[i][j] += a[i][k]·b[k][j] + a[i][k+1]·b[k+1][j] for an MR × NR
 * tile in 24 zmm accumulators (VDPBF16PS: 32 bf16 products per instruction, twice fp32's FMA). The weights
 * stay in the model as they are (fp32 or blocks): only the packed panels are bf16, so nothing is copied.
 * Error: each factor's relative rounding is at most 2⁻⁹; products and sums are fp32 — docs/native.md
 * states the bound the tests hold (tests/native/test_prefill_bf16.py).
 */
#include "common.h"
#include "prefill.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && PF_MR == 12 && PF_NR == 32
#include <immintrin.h>

int gemm_bf16_built(void) { return 1; }

/* x rows [m0, m0 + rows) (rows past `rows` zero), values [k0, k0 + kc): ap[k/2][MR] pairs of bf16 (as uint32) */
static void pack_a_bf16(const float *x, int64_t ldx, int64_t m0, int64_t rows, int64_t k0, int64_t kc, uint32_t *ap) {
    const int64_t kc2 = (kc + 1) / 2;
    uint32_t line[PF_KC / 2 + 16] __attribute__((aligned(64)));
    for (int i = 0; i < PF_MR; i++) {
        if (i >= rows) {
            for (int64_t p = 0; p < kc2; p++) ap[p * PF_MR + i] = 0;
            continue;
        }
        const float *src = x + (m0 + i) * ldx + k0;
        for (int64_t k = 0; k < kc; k += 32) { /* 32 floats -> 16 pairs, in k order */
            const int64_t n = kc - k < 32 ? kc - k : 32;
            const __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
            const __mmask16 hi = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
            const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k + 16), _mm512_maskz_loadu_ps(lo, src + k));
            _mm512_store_si512((__m512i *)(line + k / 2), (__m512i)v);
        }
        for (int64_t p = 0; p < kc2; p++) ap[p * PF_MR + i] = line[p];
    }
}

/* bp (fp32, bp[k][NR] from gemm_pack_b) -> out[k/2][NR][2] bf16 */
static void panel_to_bf16(const float *bp, int64_t kc, uint16_t *out) {
    const __m512i lo_half = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                             6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t k = 0; k < kc; k += 2, out += 2 * PF_NR)
        for (int h = 0; h < 2; h++) { /* columns 16h .. 16h + 15 */
            const __m512 a = _mm512_loadu_ps(bp + k * PF_NR + 16 * h);
            const __m512 b = k + 1 < kc ? _mm512_loadu_ps(bp + (k + 1) * PF_NR + 16 * h) : _mm512_setzero_ps();
            const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* a0..a15 | b0..b15 */
            _mm512_storeu_si512((__m512i *)(out + 32 * h), _mm512_permutexvar_epi16(lo_half, v));
        }
}

/* y[0:rows, 0:cols] (+)= Σ_pairs (+ bias): the tile of ap (kc2 pairs × MR) and bp (kc2 pairs × NR) */
static void micro_bf16(const uint32_t *restrict a, const uint16_t *restrict b, int64_t kc2, float *y, int64_t ldy,
                       int64_t rows, int64_t cols, const float *bias, int add) {
#define BF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define BF_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define BF_DOT(i)                                                                                         \
    {                                                                                                     \
        const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);                                       \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, ai, b0);                                                      \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, ai, b1);                                                      \
    }
#define BF_OUT(i) _mm512_store_ps(t + (i) * PF_NR, c##i##0), _mm512_store_ps(t + (i) * PF_NR + 16, c##i##1);
#define BF_Y(i)                                                                                           \
    {                                                                                                     \
        float *yr = y + (i) * ldy;                                                                        \
        __m512 v0 = c##i##0, v1 = c##i##1;                                                                \
        if (bias) v0 = _mm512_add_ps(v0, _mm512_loadu_ps(bias)), v1 = _mm512_add_ps(v1, _mm512_loadu_ps(bias + 16)); \
        if (add) v0 = _mm512_add_ps(v0, _mm512_loadu_ps(yr)), v1 = _mm512_add_ps(v1, _mm512_loadu_ps(yr + 16)); \
        _mm512_storeu_ps(yr, v0), _mm512_storeu_ps(yr + 16, v1);                                          \
    }
    BF_ROWS(BF_DECL)
    for (int64_t p = 0; p < kc2; p++, a += PF_MR, b += 2 * PF_NR) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(b + 32));
        BF_ROWS(BF_DOT)
    }
    if (rows == PF_MR && cols == PF_NR) {
        BF_ROWS(BF_Y)
        return;
    }
    float t[PF_MR * PF_NR] __attribute__((aligned(64)));
    BF_ROWS(BF_OUT)
    gemm_store_tile(t, y, ldy, rows, cols, bias, add);
#undef BF_ROWS
#undef BF_DECL
#undef BF_DOT
#undef BF_OUT
#undef BF_Y
}

/* One thread, as gemm_panels (gemm.c) with the products in bf16; mine: gemm_pack_floats(M) floats. */
void gemm_panels_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                      const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1,
                      float *mine) {
    const int64_t KB = gemm_k_block(K, type), slivers = (M + PF_MR - 1) / PF_MR;
    uint32_t *ap = (uint32_t *)mine; /* slivers · MR · KC/2 pairs: half of the fp32 slivers' room */
    float *bp = mine + slivers * PF_MR * PF_KC, *rows = bp + PF_KC * PF_NR;
    uint16_t *b16 = (uint16_t *)(rows + PF_KC * PF_NR); /* KC/2 · NR pairs */
    for (int64_t k0 = 0; k0 < K && p0 < p1; k0 += KB) {
        const int64_t kc = K - k0 < KB ? K - k0 : KB, kc2 = (kc + 1) / 2;
        for (int64_t s = 0; s < slivers; s++)
            pack_a_bf16(x, ldx, s * PF_MR, M - s * PF_MR < PF_MR ? M - s * PF_MR : PF_MR, k0, kc, ap + s * PF_MR * kc2);
        for (int64_t p = p0; p < p1; p++) {
            const int64_t n0 = p * PF_NR, nv = N - n0 < PF_NR ? N - n0 : PF_NR;
            gemm_pack_b(W, type, K, n0, nv, k0, kc, bp, rows);
            panel_to_bf16(bp, kc, b16);
            for (int64_t s = 0; s < slivers; s++) {
                const int64_t m0 = s * PF_MR, rows_s = M - m0 < PF_MR ? M - m0 : PF_MR;
                micro_bf16(ap + s * PF_MR * kc2, b16, kc2, y + m0 * ldy + n0, ldy, rows_s, nv,
                           k0 == 0 && bias ? bias + n0 : 0, accumulate || k0 > 0);
            }
        }
    }
}
#else
int gemm_bf16_built(void) { return 0; }

void gemm_panels_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, const void *W, int64_t type,
                      const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1,
                      float *mine) { /* never called: callers check gemm_bf16_built() first */
    gemm_panels(x, ldx, M, K, W, type, bias, y, ldy, N, accumulate, p0, p1, mine);
}
#endif

/* 1 when this build computes products in bf16 (AVX512-BF16), else 0 (native/prefill.py asks before choosing it) */
GM_API int gm_prefill_bf16(void) { return gemm_bf16_built(); }
