/* Quantised linear layers: weights in GGUF's block formats, read in place, activations in fp32.
 *
 *   Q8_0: fp16 d, 32 × int8 q             value = q · d              (34 bytes / 32 values)
 *   Q4_0: fp16 d, 16 bytes of nibbles     value = (q − 8) · d        (18 bytes)
 *   Q4_1: fp16 d, fp16 m, 16 bytes        value = q · d + m          (20 bytes)
 *
 * Nibbles: byte j holds value j (low 4 bits) and value j + 16 (high 4 bits), as gguf/quants.py reads them.
 * Q6_K / Q4_K (super-blocks of 256 values, dequant_kblock: AVX2 or scalar unpacking): batch 1 dequantises
 * one super-block at a time into a stack buffer and dots it with x (kgemv_rows); batches > 1 take the
 * 8-row buffered path below.
 * A team of threads splits the output rows in blocks of 8. Batch 1 (AVX2/AVX-512 builds): qgemv.c dots each
 * row's blocks with x straight away (d · Σ q·x per block). Batches > 1: each thread dequantises
 * its 8 rows into an L1/L2-resident buffer and runs the fp32 dot tiles of linear.c over them, every
 * input row reusing them. Either way the result is the fp32 product with the dequantised matrix up
 * to summation order (~1e-7 relative).
 * Batch 1 of Q8_0 / Q4_0 / Q4_1 takes int8 activations by default (qdot8.c: llama.cpp's per-block scales; the
 * product is dequantise(W) · dequantise(quantise_q8(x))); GENMODELS_NATIVE_QDOT=fp32 keeps x in fp32 (qgemv.c),
 * as every other path here does (there a quantised product equals dequantise-then-fp32 to ~1e-6).
 * Dequantisation has AVX-512, AVX2 and scalar paths, chosen at build time (-march=native).
 */
#include "common.h"
#include "quant.h"
#include <stdlib.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define GM_QLANES 16
#elif defined(GM_AVX2)
#define GM_QLANES 8
#else
#define GM_QLANES 1
#endif

int64_t quant_block_bytes(int64_t type) {
    switch (type) {
    case GM_Q8_0: return 34;
    case GM_Q4_0: return 18;
    case GM_Q4_1: return 20;
    case GM_Q4_K: return 144;
    case GM_Q6_K: return 210;
    default: return 0;
    }
}

int64_t quant_block_values(int64_t type) { return type == GM_Q4_K || type == GM_Q6_K ? GM_QK_K : GM_QK; }

/* One block of 32 values -> out[0:32]. */
static inline void dequant_block(const uint8_t *b, int64_t type, float *out) {
    const float d = half_to_float(b);
#if GM_QLANES == 16
    const __m512 vd = _mm512_set1_ps(d);
    if (type == GM_Q8_0) {
        for (int j = 0; j < 2; j++) {
            __m128i q = _mm_loadu_si128((const __m128i *)(b + 2 + 16 * j));
            _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), vd));
        }
        return;
    }
    const uint8_t *qs = b + (type == GM_Q4_1 ? 4 : 2);
    __m128i raw = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0f);
    __m128i nib[2] = {_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask)};
    for (int j = 0; j < 2; j++) {
        __m512i q = _mm512_cvtepu8_epi32(nib[j]);
        if (type == GM_Q4_0)
            _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(8))), vd));
        else
            _mm512_storeu_ps(out + 16 * j, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q), vd),
                                                         _mm512_set1_ps(half_to_float(b + 2))));
    }
#elif GM_QLANES == 8
    const __m256 vd = _mm256_set1_ps(d);
    if (type == GM_Q8_0) {
        for (int j = 0; j < 4; j++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + 8 * j));
            _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd));
        }
        return;
    }
    const uint8_t *qs = b + (type == GM_Q4_1 ? 4 : 2);
    __m128i raw = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0f);
    __m128i nib[2] = {_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask)};
    const __m256 vm = _mm256_set1_ps(type == GM_Q4_1 ? half_to_float(b + 2) : 0.0f);
    for (int j = 0; j < 4; j++) {
        __m128i src = j & 1 ? _mm_srli_si128(nib[j >> 1], 8) : nib[j >> 1];
        __m256i q = _mm256_cvtepu8_epi32(src);
        if (type == GM_Q4_0)
            _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(8))), vd));
        else
            _mm256_storeu_ps(out + 8 * j, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), vd), vm));
    }
#else
    if (type == GM_Q8_0) {
        for (int j = 0; j < 32; j++) out[j] = (float)(int8_t)b[2 + j] * d;
        return;
    }
    const uint8_t *qs = b + (type == GM_Q4_1 ? 4 : 2);
    const float m = type == GM_Q4_1 ? half_to_float(b + 2) : 0.0f;
    for (int j = 0; j < 16; j++) {
        int lo = qs[j] & 0x0f, hi = qs[j] >> 4;
        if (type == GM_Q4_0) out[j] = (float)(lo - 8) * d, out[j + 16] = (float)(hi - 8) * d;
        else out[j] = (float)lo * d + m, out[j + 16] = (float)hi * d + m;
    }
#endif
}

/* One super-block of 256 values (Q6_K or Q4_K, layouts of gguf/quants.py) -> out[0:256]; AVX2 or scalar
 * code, the same products ((d · scale) · q, then − dmin · m) either way.
 *   Q6_K: ql[128], qh[64], int8 sc[16], fp16 d. Value h·128 + r: low = ql[h·64 + r%64] >> 4·(r/64) & 15,
 *         high = qh[h·32 + r%32] >> 2·(r/32) & 3; y = (d · sc[v/16]) · ((low | high << 4) − 32).
 *   Q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, qs[128]. Value c·64 + h·32 + i:
 *         q = qs[c·32 + i] >> 4h & 15, sub-block s = 2c + h: y = (d · sc[s]) · q − dmin · m[s]. */
static void dequant_kblock(const uint8_t *restrict b, int64_t type, float *restrict out) {
    if (type == GM_Q6_K) {
        const uint8_t *restrict ql = b, *restrict qh = b + 128;
        const int8_t *restrict sc = (const int8_t *)(b + 192);
        const float d = half_to_float(b + 208);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, out += 128) /* r = 32·t + l, t < 4 */
#ifdef GM_AVX2
            for (int l = 0; l < 32; l += 8) { /* 8 values of each of the 4 runs; the same products as below */
                const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ql + l)));
                const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ql + l + 32)));
                const __m256i hb = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qh + l)));
                const __m256i m15 = _mm256_set1_epi32(15), m3 = _mm256_set1_epi32(3), k32 = _mm256_set1_epi32(32);
                const __m256i lo[4] = {_mm256_and_si256(a, m15), _mm256_and_si256(c, m15), _mm256_srli_epi32(a, 4),
                                       _mm256_srli_epi32(c, 4)};
                for (int t = 0; t < 4; t++) {
                    __m256i hi = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 2 * t), m3), 4);
                    __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(lo[t], hi), k32));
                    _mm256_storeu_ps(out + 32 * t + l, _mm256_mul_ps(_mm256_set1_ps(d * (float)sc[l / 16 + 2 * t]), q));
                }
            }
#else
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                out[l] = (d * (float)sc[is]) * (float)(((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32);
                out[l + 32] = (d * (float)sc[is + 2]) * (float)(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
                out[l + 64] = (d * (float)sc[is + 4]) * (float)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                out[l + 96] = (d * (float)sc[is + 6]) * (float)(((ql[l + 32] >> 4) | ((qh[l] >> 6) << 4)) - 32);
            }
#endif
        return;
    }
    const float d = half_to_float(b), dmin = half_to_float(b + 2);
    const uint8_t *s = b + 4, *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        int c = j / 2, h = j % 2;
        int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        const float ds = d * (float)sc, dm = dmin * (float)m;
#ifdef GM_AVX2
        for (int i = 0; i < 32; i += 8) {
            __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + c * 32 + i)));
            q = _mm256_and_si256(_mm256_srli_epi32(q, 4 * h), _mm256_set1_epi32(15));
            _mm256_storeu_ps(out + j * 32 + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(ds), _mm256_cvtepi32_ps(q)),
                                                             _mm256_set1_ps(dm)));
        }
#else
        for (int i = 0; i < 32; i++) out[j * 32 + i] = ds * (float)((qs[c * 32 + i] >> (4 * h)) & 15) - dm;
#endif
    }
}

/* Values [k0, k1) of one row of blocks -> out[0 : k1 − k0]; k0 and k1 multiples of the block's values
 * (the prefill's panels, prefill.c, take a span of rows at a time). */
void quant_dequant_span(const uint8_t *row, int64_t type, int64_t k0, int64_t k1, float *out) {
    const int64_t bb = quant_block_bytes(type), qk = quant_block_values(type);
    for (int64_t k = k0; k < k1; k += qk) {
        if (qk == GM_QK_K) dequant_kblock(row + (k / qk) * bb, type, out + (k - k0));
        else dequant_block(row + (k / qk) * bb, type, out + (k - k0));
    }
}

static void dequant_row(const uint8_t *row, int64_t type, int64_t K, float *out) {
    quant_dequant_span(row, type, 0, K, out);
}

/* Batch 1 for the K formats: rows [n0, n1) of y (+)= W x + bias, each super-block dequantised into a
 * 256-float stack buffer and dotted with x at once (no row buffer; the same sums as the fp32 product). */
static void kgemv_rows(const float *x, int64_t K, const uint8_t *Wq, int64_t type, const float *bias, float *y,
                       int64_t n0, int64_t n1, int accumulate) {
    const int64_t bb = quant_block_bytes(type), row_bytes = K / GM_QK_K * bb;
    float w[GM_QK_K] __attribute__((aligned(64)));
    for (int64_t n = n0; n < n1; n++) {
        float acc[16] = {0};
        for (int64_t k = 0; k < K; k += GM_QK_K) {
            dequant_kblock(Wq + n * row_bytes + (k / GM_QK_K) * bb, type, w);
            for (int i = 0; i < GM_QK_K; i += 16)
                for (int l = 0; l < 16; l++) acc[l] += w[i + l] * x[k + i + l];
        }
        float v = bias ? bias[n] : 0.0f;
        for (int l = 0; l < 16; l++) v += acc[l];
        y[n] = accumulate ? y[n] + v : v;
    }
}

/* this thread's dequantisation buffer, grown as needed (kept for the thread's life) */
static float *thread_buffer(int64_t floats) {
    static __thread float *buf;
    static __thread int64_t cap;
    if (floats > cap) {
        free(buf);
        buf = aligned_alloc(64, (size_t)((floats * 4 + 63) / 64 * 64));
        cap = buf ? floats : 0;
    }
    return buf;
}

/* Rows [n0, n1) (at most 8) of y (M, N) (+)= x · Wᵀ + bias, W in blocks of `type`. */
static void qlinear_rows(const float *x, int64_t M, int64_t K, const uint8_t *Wq, int64_t type, const float *bias,
                         float *y, int64_t N, int64_t n0, int64_t n1, int accumulate) {
    if (M == 1 && quant_block_values(type) == GM_QK_K) {
        kgemv_rows(x, K, Wq, type, bias, y, n0, n1, accumulate);
        return;
    }
    const int64_t row_bytes = K / quant_block_values(type) * quant_block_bytes(type);
    float *w = thread_buffer((n1 - n0) * K);
    if (!w) abort(); /* out of memory for a few rows */
    for (int64_t n = n0; n < n1; n++) dequant_row(Wq + n * row_bytes, type, K, w + (n - n0) * K);
    linear_rows_ld(x, K, M, K, w, K, bias ? bias + n0 : 0, y + n0, N, 0, n1 - n0, accumulate);
}

void any_linear_team(const float *x, int64_t M, int64_t K, const void *W, int64_t type, const float *bias, float *y,
                     int64_t N, int accumulate) {
    if (type == GM_F32) {
        linear_team(x, M, K, (const float *)W, bias, y, N, accumulate);
        return;
    }
    const int64_t nb = (N + 7) / 8;
#ifdef GM_AVX2
    if (M == 1 && quant_block_values(type) == GM_QK) { /* batch 1: qdot8.c (int8 x) or qgemv.c (fp32 x) */
        if (qdot8_team(x, K, (const uint8_t *)W, type, bias, y, N, accumulate)) return;
        float *xsum = 0;
        if (type == GM_Q4_1) { /* each thread sums x's blocks once per product (no barrier) */
            if (!(xsum = thread_buffer(K / GM_QK))) abort();
            qgemv_block_sums(x, K, xsum);
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nb; b++)
            qgemv_rows(x, xsum, K, (const uint8_t *)W, type, bias, y, b * 8, b * 8 + 8 < N ? b * 8 + 8 : N, accumulate);
        return;
    }
#endif
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t n0 = b * 8, n1 = n0 + 8 < N ? n0 + 8 : N;
        qlinear_rows(x, M, K, (const uint8_t *)W, type, bias, y, N, n0, n1, accumulate);
    }
}

/* The lanes the dequantisation was built for (16 AVX-512, 8 AVX2, 1 scalar). */
GM_API int64_t gm_quant_lanes(void) { return GM_QLANES; }

/* y (M, N) = x (M, K) · W (N, K)ᵀ + bias, W as N rows of K / 32 (K formats: K / 256) blocks of `type`;
 * returns -1 for an unknown type or K not a multiple of the block size, else 0. */
GM_API int gm_qlinear(const float *x, int64_t M, int64_t K, const void *W, int64_t type, const float *bias, float *y,
                      int64_t N, int n_threads) {
    if ((type != GM_F32 && !quant_block_bytes(type)) || K % quant_block_values(type)) return -1;
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1)
    any_linear_team(x, M, K, W, type, bias, y, N, 0);
    return 0;
}

/* out (N, K) = the fp32 values of N rows of blocks (the C dequantisation, for tests). */
GM_API int gm_dequantize(const void *W, int64_t type, int64_t N, int64_t K, float *out) {
    if (!quant_block_bytes(type) || K % quant_block_values(type)) return -1;
    const int64_t row_bytes = K / quant_block_values(type) * quant_block_bytes(type);
    for (int64_t n = 0; n < N; n++) dequant_row((const uint8_t *)W + n * row_bytes, type, K, out + n * K);
    return 0;
}
