/* The prefill's matrix products in bf16: y (M, N) (+)= bf16(x) (M, K) · bf16(W) (N, K)ᵀ + bias, products of
 * bf16 values summed in fp32 — built only where the compiler targets AVX512-BF16 (-march=native on AMD Zen 4,
 * Intel Cooper Lake / Sapphire Rapids and later); elsewhere gemm_bf16_built() is 0 and the caller refuses.
 *
 * The same blocking as gemm.c (Goto & van de Geijn 2008): per K-block, each thread packs x's rows and one
 * NR-wide panel of W (fp32, or GGUF blocks dequantised one row span at a time), rounding both to bf16 (round to
 * nearest even, as torch's .bfloat16(): VCVTNE2PS2BF16) in the layout VDPBF16PS reads — pairs of consecutive k,
 * each pair one 32-bit lane, so a row's pairs are transposed into place by 8 × 8 (4 × 4) register transposes:
 *
 *     Ap[s][k/2][MR][2]     Bp[k/2][NR][2]        (an odd K-block's last pair padded with 0)
 *
 * and the micro-kernel adds, per pair of k, c[i][j] += a[i][k]·b[k][j] + a[i][k+1]·b[k+1][j] for an MR × NR
 * tile in 24 zmm accumulators (VDPBF16PS: 32 bf16 products per instruction, twice fp32's FMA). The weights
 * stay in the model as they are (fp32 or blocks); an fp32 W may also be packed ONCE in this Bp layout
 * (gm_pack_bf16: every K-block's panels, half W's fp32 bytes; native/prefill.py keeps it per weight), which the
 * products then read instead of converting W's panels at every call — the same pairs, so the same bits.
 * Error: each factor's relative rounding is at most 2⁻⁹; products and sums are fp32 — docs/native.md
 * states the bound the tests hold (tests/native/test_prefill_bf16.py).
 */
#include "common.h"
#include "prefill.h"
#include "quant.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && PF_MR == 12 && PF_NR == 32
#include <immintrin.h>

int gemm_bf16_built(void) { return 1; }

#define BF_LD (PF_KC / 2 + 16) /* uint32 of one row's pairs (to_pairs writes 16 at a time) */

/* src[0:kc] -> dst[0:(kc + 1) / 2]: pairs (src[2p], src[2p + 1]) rounded to bf16 (nearest even), 0 past kc; writes
 * nothing past dst[(kc + 1) / 2 - 1] */
static void to_pairs(const float *src, int64_t kc, uint32_t *dst) {
    for (int64_t k = 0; k < kc; k += 32) {
        const int64_t n = kc - k < 32 ? kc - k : 32;
        const __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
        const __mmask16 hi = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k + 16), _mm512_maskz_loadu_ps(lo, src + k));
        _mm512_mask_storeu_epi32(dst + k / 2, n >= 32 ? 0xffff : (__mmask16)((1u << (n + 1) / 2) - 1), (__m512i)v);
    }
}

/* out[p · ldo + j] = line[j][p] for 8 lines of kc2 pairs: 8 × 8 register transposes, then the tail */
static void transpose_pairs(uint32_t (*line)[BF_LD], int64_t kc2, uint32_t *out, int64_t ldo) {
    const float *src[8];
    for (int j = 0; j < 8; j++) src[j] = (const float *)line[j];
    int64_t p = 0;
    for (; p + 8 <= kc2; p += 8) gemm_transpose8(src, p, (float *)(out + p * ldo), ldo);
    for (; p < kc2; p++)
        for (int j = 0; j < 8; j++) out[p * ldo + j] = line[j][p];
}

/* 8 pairs (16 values from src[k], fewer at the end: 0 past n) of one row of x, as 8 u32 lanes of bf16 pairs */
static inline __m256 row_pairs8(const float *src, int64_t n) {
    const __mmask8 lo = n >= 8 ? 0xff : (__mmask8)((1u << n) - 1), hi = n >= 16 ? 0xff : n > 8 ? (__mmask8)((1u << (n - 8)) - 1) : 0;
    return (__m256)_mm256_cvtne2ps_pbh(_mm256_maskz_loadu_ps(hi, src + 8), _mm256_maskz_loadu_ps(lo, src));
}

/* ap[p][0:MR] = pair p of rows r[0:MR] (8 pairs each, as u32 lanes) for p < np: rows 0-7 transposed 8 × 8 and rows
 * 8-11 4 × 8 in registers, each pair's MR lanes stored in place (no line buffer: a store then reload of another width
 * stalls store forwarding). */
static inline void store_sliver_pairs(__m256 r[PF_MR], int64_t np, uint32_t *ap) {
    __m256 t[8];
    gemm_transpose8_regs(r, t); /* t[p]: rows 0-7 of pair p */
    for (int p = 0; p < np && p < 8; p++) _mm256_storeu_ps((float *)(ap + p * PF_MR), t[p]);
    /* rows 8-11: 4 × 4 transposes within each 128-bit half: u[p] = pair p | pair p + 4 of the four rows */
    const __m256 a = _mm256_unpacklo_ps(r[8], r[9]), b = _mm256_unpackhi_ps(r[8], r[9]);
    const __m256 c = _mm256_unpacklo_ps(r[10], r[11]), d = _mm256_unpackhi_ps(r[10], r[11]);
    const __m256 u[4] = {_mm256_shuffle_ps(a, c, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(a, c, _MM_SHUFFLE(3, 2, 3, 2)),
                         _mm256_shuffle_ps(b, d, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(b, d, _MM_SHUFFLE(3, 2, 3, 2))};
    for (int p = 0; p < 4; p++) {
        if (p < np) _mm_storeu_ps((float *)(ap + p * PF_MR + 8), _mm256_castps256_ps128(u[p]));
        if (p + 4 < np) _mm_storeu_ps((float *)(ap + (p + 4) * PF_MR + 8), _mm256_extractf128_ps(u[p], 1));
    }
}

/* Sliver s of x's rows [0, M) (rows past M zero), values [k0, k0 + kc): ap[s][k/2][MR] pairs of bf16 (as uint32).
 * Per 8 pairs of k: each of the MR rows converted into one ymm (row_pairs8), then store_sliver_pairs. */
void gemm_pack_a_bf16(const float *x, int64_t ldx, int64_t M, int64_t k0, int64_t kc, int64_t s, float *ap_) {
    const int64_t kc2 = (kc + 1) / 2, rows = M - s * PF_MR < PF_MR ? M - s * PF_MR : PF_MR;
    uint32_t *ap = (uint32_t *)ap_ + s * PF_MR * kc2;
    const float *src = x + s * PF_MR * ldx + k0;
    for (int64_t k = 0; k < kc; k += 16, ap += 8 * PF_MR) {
        const int64_t n = kc - k < 16 ? kc - k : 16; /* values of this group */
        __m256 r[PF_MR];
        for (int i = 0; i < PF_MR; i++) r[i] = i < rows ? row_pairs8(src + i * ldx + k, n) : _mm256_setzero_ps();
        store_sliver_pairs(r, (n + 1) / 2, ap);
    }
}

void prefill_norm_slivers(const float *x, int64_t M, int64_t K, int kind, float eps, const float *w, uint32_t *xs) {
    int64_t m0, m1;
    prefill_thread_rows(M, &m0, &m1);
    const int64_t KB = gemm_k_block(K, GM_F32), S = (m1 - m0 + PF_MR - 1) / PF_MR;
    xs += (m0 + PF_MR * thread_id()) * K / 2; /* this thread's slivers (gm_fuse) */
    for (int64_t s = 0; s < S; s++) {
        const float *src = x + (m0 + s * PF_MR) * K;
        const int64_t rows = m1 - m0 - s * PF_MR < PF_MR ? m1 - m0 - s * PF_MR : PF_MR;
        float r[PF_MR], mu[PF_MR];
        for (int64_t i = 0; i < rows; i++) r[i] = norm_scale(src + i * K, K, kind, eps, &mu[i]);
        for (int64_t k0 = 0; k0 < K; k0 += KB) {
            const int64_t kc = K - k0 < KB ? K - k0 : KB;
            uint32_t *ap = xs + S * PF_MR * (k0 / 2) + s * PF_MR * ((kc + 1) / 2);
            for (int64_t k = k0; k < k0 + kc; k += 16, ap += 8 * PF_MR) {
                const int64_t n = k0 + kc - k < 16 ? k0 + kc - k : 16;
                const __mmask8 lo = n >= 8 ? 0xff : (__mmask8)((1u << n) - 1), hi = n >= 16 ? 0xff : n > 8 ? (__mmask8)((1u << (n - 8)) - 1) : 0;
                const __m256 w0 = _mm256_maskz_loadu_ps(lo, w + k), w1 = _mm256_maskz_loadu_ps(hi, w + k + 8);
                __m256 v[PF_MR];
                for (int i = 0; i < PF_MR; i++) { /* (x − μ) · r · γ, as norm_row (x − 0 = x for RMSNorm) */
                    if (i >= rows) {
                        v[i] = _mm256_setzero_ps();
                        continue;
                    }
                    const __m256 vm = _mm256_set1_ps(mu[i]), vr = _mm256_set1_ps(r[i]);
                    const __m256 a = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_maskz_loadu_ps(lo, src + i * K + k), vm), vr), w0);
                    const __m256 b = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_maskz_loadu_ps(hi, src + i * K + k + 8), vm), vr), w1);
                    v[i] = (__m256)_mm256_cvtne2ps_pbh(b, a);
                }
                store_sliver_pairs(v, (n + 1) / 2, ap);
            }
        }
    }
}

/* The panel of W rows [n0, n0 + nv) (rows past nv zero), values [k0, k0 + kc), as bp[k/2][NR] pairs of bf16; a
 * quantised W's rows are dequantised into `rows` (NR × kc floats) first. half > 0 (fp32 W (2·half, K) of a gated
 * MLP, gate rows then up rows): panel n0 / NR holds gate rows n0/2 + [0, NR/2) then the same up rows half + n0/2 + …,
 * so one tile ends with the gate and up values of the same NR/2 hidden units (micro_rows' hid epilogue). */
static void pack_b_bf16(const void *W, int64_t type, int64_t K, int64_t n0, int64_t nv, int64_t k0, int64_t kc,
                        uint32_t *bp, float *rows, uint32_t (*line)[BF_LD], int64_t half) {
    const int64_t row_bytes = type == GM_F32 ? K * 4 : K / quant_block_values(type) * quant_block_bytes(type);
    const int64_t kc2 = (kc + 1) / 2;
    for (int64_t j = 0; j < PF_NR; j++) {
        if (j >= nv) {
            memset(line[j], 0, kc2 * sizeof(uint32_t));
            continue;
        }
        const int64_t n = half ? (j < PF_NR / 2 ? n0 / 2 + j : half + n0 / 2 + j - PF_NR / 2) : n0 + j; /* gated: below */
        const float *src = (const float *)W + n * K + k0;
        if (type != GM_F32) {
            src = rows + j * kc;
            quant_dequant_span((const uint8_t *)W + (n0 + j) * row_bytes, type, k0, k0 + kc, rows + j * kc);
        }
        to_pairs(src, kc, line[j]);
    }
    for (int j = 0; j < PF_NR; j += 8) transpose_pairs(line + j, kc2, bp + j, PF_NR);
}

/* y[0:rows, 0:cols] (+)= Σ_pairs (+ bias): rows < MR ≤ PF_MR of the tile of ap (kc2 pairs × PF_MR lanes, only the
 * first MR read) and bp (kc2 pairs × NR). MR is a constant at each call site (micro_bf16 picks 12, 8 or 4 rows), so a
 * sliver of 4 or 8 rows costs 4 or 8 rows of products, not 12; every output's pairs are summed in the same order
 * whatever MR, so the bits do not depend on it. */
INLINE void micro_rows(const uint32_t *restrict a, const uint16_t *restrict b, int64_t kc2, float *y, int64_t ldy,
                       int64_t rows, int64_t cols, const float *bias, int add, float *hid, int64_t ldh, uint32_t *hsl,
                       const int MR) {
#define BF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define BF_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define BF_DOT(i)                                                                                         \
    if (MR > i) {                                                                                         \
        const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);                                       \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, ai, b0);                                                      \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, ai, b1);                                                      \
    }
#define BF_H(i)                                                                                           \
    if (MR > i && i < rows) {                                                                             \
        __m512 g = c##i##0, u = c##i##1;                                                                  \
        if (add) g = _mm512_add_ps(g, _mm512_loadu_ps(y + (i) * ldy)), u = _mm512_add_ps(u, _mm512_loadu_ps(y + (i) * ldy + 16)); \
        if (hsl) h8[i] = (__m256)_mm512_cvtneps_pbh(_mm512_mul_ps(silu16(g), u)); /* as row_pairs8 rounds */ \
        else _mm512_storeu_ps(hid + (i) * ldh, _mm512_mul_ps(silu16(g), u));                              \
    }
#define BF_OUT(i) if (MR > i) _mm512_store_ps(t + (i) * PF_NR, c##i##0), _mm512_store_ps(t + (i) * PF_NR + 16, c##i##1);
#define BF_Y(i)                                                                                           \
    if (MR > i) {                                                                                         \
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
    if (hid || hsl) { /* a gated product's last K-block: SiLU(gate: columns 0-15) · (up: columns 16-31), y not written */
        __m256 h8[PF_MR];
        for (int i = 0; i < PF_MR; i++) h8[i] = _mm256_setzero_ps(); /* rows past `rows`: zero, as gemm_pack_a_bf16's */
        BF_ROWS(BF_H)
        if (hsl) store_sliver_pairs(h8, 8, hsl); /* the 8 pairs of these 16 hidden units, as the next product's x */
        return;
    }
    if (rows == MR && cols == PF_NR) {
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
#undef BF_H
}

static void micro_bf16_12(const uint32_t *restrict a, const uint16_t *restrict b, int64_t kc2, float *y, int64_t ldy,
                          int64_t rows, int64_t cols, const float *bias, int add, float *hid, int64_t ldh, uint32_t *hsl) {
    micro_rows(a, b, kc2, y, ldy, rows, cols, bias, add, hid, ldh, hsl, 12);
}
static void micro_bf16_8(const uint32_t *restrict a, const uint16_t *restrict b, int64_t kc2, float *y, int64_t ldy,
                         int64_t rows, int64_t cols, const float *bias, int add, float *hid, int64_t ldh, uint32_t *hsl) {
    micro_rows(a, b, kc2, y, ldy, rows, cols, bias, add, hid, ldh, hsl, 8);
}
static void micro_bf16_4(const uint32_t *restrict a, const uint16_t *restrict b, int64_t kc2, float *y, int64_t ldy,
                         int64_t rows, int64_t cols, const float *bias, int add, float *hid, int64_t ldh, uint32_t *hsl) {
    micro_rows(a, b, kc2, y, ldy, rows, cols, bias, add, hid, ldh, hsl, 4);
}

/* The tile of a sliver of `rows` ≤ PF_MR rows: the narrowest of the 12-, 8- and 4-row kernels that covers them. */
static inline void micro_bf16(const uint32_t *restrict a, const uint16_t *restrict b, int64_t kc2, float *y,
                              int64_t ldy, int64_t rows, int64_t cols, const float *bias, int add, float *hid,
                              int64_t ldh, uint32_t *hsl) {
    (rows > 8 ? micro_bf16_12 : rows > 4 ? micro_bf16_8 : micro_bf16_4)(a, b, kc2, y, ldy, rows, cols, bias, add, hid, ldh,
                                                                        hsl);
}

/* The MR × NR tile of y at t (rows ldy apart, `rows` of them left) fetched into L1 while the tile before it runs:
 * a wide product's y (Llama B's up projection: 512 × 2752 floats) does not stay in L2 across K-blocks, and the
 * micro-kernel's adds to it would otherwise wait for memory at the end of every tile. */
static inline void prefetch_tile(const float *t, int64_t ldy, int64_t rows) {
    for (int64_t i = 0; i < PF_MR && i < rows; i++) {
        _mm_prefetch((const char *)(t + i * ldy), _MM_HINT_T0);
        _mm_prefetch((const char *)(t + i * ldy + 16), _MM_HINT_T0);
    }
}

/* One K-block [k0, k0 + kc) of gemm_panels (gemm.c) in bf16: ap the packed slivers (gemm_pack_a_bf16), panels
 * [p0, p1) packed in `mine` (the thread's room after its A slivers), or read from `packed` (gm_pack_bf16's layout:
 * W packed once, fp32 only) when not NULL. */
void gemm_bf16_block(const float *ap_, int64_t M, int64_t K, const void *W, int64_t type, int64_t k0, int64_t kc,
                     const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1,
                     float *mine, const uint32_t *packed, const gm_fuse *fuse) {
    /* the gated epilogue (gm_fuse), on the last K-block only */
    const gm_fuse *const f = k0 + kc == K && fuse && (fuse->hid || fuse->hid_slivers) ? fuse : 0;
    const int64_t F = N / 2, FB = f ? gemm_k_block(F, GM_F32) : 1; /* the next product's K and K-blocks (slivers) */
    const int64_t slivers = (M + PF_MR - 1) / PF_MR, kc2 = (kc + 1) / 2, P = (N + PF_NR - 1) / PF_NR;
    const uint32_t *ap = (const uint32_t *)ap_;
    float *lns = mine, *rows = lns + PF_KC * PF_NR; /* NR · BF_LD pairs; NR · KC floats */
    uint32_t *b16 = (uint32_t *)(rows + PF_KC * PF_NR); /* KC/2 · NR pairs */
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n0 = p * PF_NR, nv = N - n0 < PF_NR ? N - n0 : PF_NR;
        const uint32_t *bp = b16;
        const char *next = 0; /* the next packed panel, fetched into L2 a share per sliver while this one runs */
        const int64_t lines = kc2 * PF_NR * 4 / 64, share = (lines + slivers - 1) / slivers;
        if (packed) {
            bp = packed + (k0 / 2 * P + p * kc2) * PF_NR; /* the K-blocks before k0 hold k0 / 2 pairs */
            next = p + 1 < p1 ? (const char *)(bp + kc2 * PF_NR) : 0;
        } else {
            pack_b_bf16(W, type, K, n0, nv, k0, kc, b16, rows, (uint32_t (*)[BF_LD])lns, 0);
        }
        for (int64_t s = 0; s < slivers; s++) {
            const int64_t m0 = s * PF_MR, rows_s = M - m0 < PF_MR ? M - m0 : PF_MR;
            for (int64_t l = s * share; next && l < (s + 1) * share && l < lines; l++)
                _mm_prefetch(next + 64 * l, _MM_HINT_T1);
            if (s + 1 < slivers) prefetch_tile(y + (m0 + PF_MR) * ldy + n0, ldy, M - m0 - PF_MR);
            else if (p + 1 < p1) prefetch_tile(y + n0 + PF_NR, ldy, M);
            uint32_t *hsl = 0; /* hidden units [n0/2, n0/2 + 16) of sliver s in the next product's K-block b */
            if (f && f->hid_slivers) {
                const int64_t u0 = n0 / 2, b0 = u0 / FB * FB, bc2 = ((F - b0 < FB ? F - b0 : FB) + 1) / 2;
                hsl = f->hid_slivers + slivers * PF_MR * (b0 / 2) + s * PF_MR * bc2 + (u0 - b0) / 2 * PF_MR;
            }
            micro_bf16(ap + s * PF_MR * kc2, (const uint16_t *)bp, kc2, y + m0 * ldy + n0, ldy, rows_s, nv,
                       k0 == 0 && bias ? bias + n0 : 0, accumulate || k0 > 0, f && f->hid ? f->hid + m0 * F + n0 / 2 : 0,
                       F, hsl);
        }
    }
}

/* u32 pairs of W (N, K) fp32 packed by gemm_bf16_pack: every K-block (gemm_k_block: even lengths but the last) of
 * every NR-wide panel, bp[k/2][NR] pairs, block-major: (K-block b, panel p) at (k0 / 2 · P + p · kc2) · NR. */
int64_t gemm_bf16_packed_pairs(int64_t N, int64_t K) { return (K + 1) / 2 * ((N + PF_NR - 1) / PF_NR) * PF_NR; }

/* One thread: panels [p0, p1) of every K-block of W (N, K) fp32 into out (gemm_bf16_packed_pairs(N, K) u32):
 * the same pairs pack_b_bf16 makes per call, so a product from them is bit for bit the per-call one. */
void gemm_bf16_pack(const float *W, int64_t N, int64_t K, uint32_t *out, int64_t p0, int64_t p1, int64_t half) {
    uint32_t line[PF_NR][BF_LD] __attribute__((aligned(64))); /* 26 KB of the thread's stack */
    const int64_t KB = gemm_k_block(K, GM_F32), P = (N + PF_NR - 1) / PF_NR;
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int64_t kc = K - k0 < KB ? K - k0 : KB, kc2 = (kc + 1) / 2;
        for (int64_t p = p0; p < p1; p++) {
            const int64_t n0 = p * PF_NR, nv = N - n0 < PF_NR ? N - n0 : PF_NR;
            pack_b_bf16(W, GM_F32, K, n0, nv, k0, kc, out + (k0 / 2 * P + p * kc2) * PF_NR, 0, line, half);
        }
    }
}
/* One thread: y (M, N) = x (M, K) · V (K, N) in bf16, V's rows ldv apart read in place (N a multiple of NR), as
 * gemm_nn (gemm.c): V's rows k, k + 1 of each NR-wide panel rounded and interleaved into pairs. (Attention's P V.) */
void gemm_nn_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, const float *V, int64_t ldv, float *y,
                  int64_t ldy, int64_t N, float *mine) {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const int64_t slivers = (M + PF_MR - 1) / PF_MR;
    uint16_t *b16 = (uint16_t *)(mine + slivers * PF_MR * PF_KC); /* KC/2 · NR pairs */
    for (int64_t k0 = 0; k0 < K; k0 += PF_KC) {
        const int64_t kc = K - k0 < PF_KC ? K - k0 : PF_KC, kc2 = (kc + 1) / 2;
        for (int64_t s = 0; s < slivers; s++) gemm_pack_a_bf16(x, ldx, M, k0, kc, s, mine);
        for (int64_t n0 = 0; n0 < N; n0 += PF_NR) {
            const float *v = V + k0 * ldv + n0;
            for (int64_t k = 0; k < kc; k += 2)
                for (int h = 0; h < 2; h++) { /* columns 16h .. 16h + 15 of rows k, k + 1 */
                    const __m512 a = _mm512_loadu_ps(v + k * ldv + 16 * h);
                    const __m512 b = k + 1 < kc ? _mm512_loadu_ps(v + (k + 1) * ldv + 16 * h) : _mm512_setzero_ps();
                    const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* a0..a15 | b0..b15 */
                    _mm512_storeu_si512((__m512i *)(b16 + k * PF_NR + 32 * h), _mm512_permutexvar_epi16(interleave, ab));
                }
            for (int64_t s = 0; s < slivers; s++) {
                const int64_t m0 = s * PF_MR, rows_s = M - m0 < PF_MR ? M - m0 : PF_MR;
                micro_bf16((const uint32_t *)mine + s * PF_MR * kc2, b16, kc2, y + m0 * ldy + n0, ldy, rows_s, PF_NR, 0,
                           k0 > 0, 0, 0, 0);
            }
        }
    }
}
#else
int gemm_bf16_built(void) { return 0; }
void gemm_pack_a_bf16(const float *x, int64_t ldx, int64_t M, int64_t k0, int64_t kc, int64_t s, float *ap) {}
void gemm_bf16_block(const float *ap, int64_t M, int64_t K, const void *W, int64_t type, int64_t k0, int64_t kc,
                     const float *bias, float *y, int64_t ldy, int64_t N, int accumulate, int64_t p0, int64_t p1,
                     float *mine, const uint32_t *packed, const gm_fuse *fuse) {} /* never called: callers check gemm_bf16_built() first */
int64_t gemm_bf16_packed_pairs(int64_t N, int64_t K) { return 0; }
void prefill_norm_slivers(const float *x, int64_t M, int64_t K, int kind, float eps, const float *w, uint32_t *xs) {}
void gemm_bf16_pack(const float *W, int64_t N, int64_t K, uint32_t *out, int64_t p0, int64_t p1, int64_t half) {}
void gemm_nn_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, const float *V, int64_t ldv, float *y,
                  int64_t ldy, int64_t N, float *mine) {}
#endif

/* 1 when this build computes products in bf16 (AVX512-BF16), else 0 (native/prefill.py asks before choosing it) */
GM_API int gm_prefill_bf16(void) { return gemm_bf16_built(); }

/* u32 (pairs of bf16) of W (N, K) packed by gm_pack_bf16; 0 in a build without bf16 */
GM_API int64_t gm_bf16_packed_size(int64_t N, int64_t K) { return gemm_bf16_packed_pairs(N, K); }

/* out = W (N, K) fp32 rounded to bf16 in the micro-kernel's panel layout (gemm_bf16_pack), once, so that the
 * prefill's products read it instead of converting W's panels at every call; -3 in a build without bf16. */
static int pack_team(const float *W, int64_t N, int64_t K, void *out, int n_threads, int64_t half) {
    if (!gemm_bf16_built()) return -3;
    const int64_t P = (N + PF_NR - 1) / PF_NR;
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1)
    gemm_bf16_pack(W, N, K, (uint32_t *)out, P * thread_id() / omp_threads(), P * (thread_id() + 1) / omp_threads(), half);
    return 0;
}

GM_API int gm_pack_bf16(const float *W, int64_t N, int64_t K, void *out, int n_threads) {
    return pack_team(W, N, K, out, n_threads, 0);
}

/* As gm_pack_bf16, for a gated MLP's fc1 W (2F, K) (gate rows, then up rows; F a multiple of NR/2): each panel holds
 * NR/2 gate rows and the same NR/2 up rows (pack_b_bf16's half), the layout gm_decoder_prefill's fused SiLU reads
 * (its 5th pointer per layer); gm_bf16_packed_size(2F, K) u32. -3 in a build without bf16, -1 for F not whole panels. */
GM_API int gm_pack_bf16_gated(const float *W, int64_t F, int64_t K, void *out, int n_threads) {
    if (F % (PF_NR / 2)) return -1;
    return pack_team(W, 2 * F, K, out, n_threads, F);
}
