/* Batch-1 quantised matrix–vector products of the decode step (Q8_0, Q4_0, Q4_1 rows read in place,
 * activations fp32): for each output row n,
 *
 *     y[n] = Σ_j d_nj · (Σ_i q_nji · x_j,i)  (+ m_nj · s_j for Q4_1),      s_j = Σ_i x_j,i
 *
 * j over the row's blocks of 32 values, q the block's integers (Q4_0: q − 8), d / m its fp16 scale / min.
 * The block sums s_j are computed once per product (qgemv_block_sums) by each thread, not once per row
 * block: the scalar loop that did so before cost as much as the products (SmolLM2's Q4_1 layers: ~half of
 * the decode step's time on one core). The sum is the fp32 product with the dequantised matrix up to
 * summation order (~1e-7 relative), so a quantised product still equals dequantise-then-fp32 to 1e-5.
 *
 * AVX-512 builds unpack a whole block into two 16-lane vectors (vpmovzxbd / vpmovsxbd; a nibble becomes its float
 * by a 16-entry table lookup, vpermps, which reads only the index's low 4 bits, so no mask and no conversion);
 * AVX2 builds into four 8-lane vectors (Q4_0 / Q4_1; Q8_0 rows go one at a time, q8_dot_row). Four rows are dotted at once (four independent accumulator chains), the
 * next four prefetched meanwhile.
 * One core of a loaded AMD EPYC Zen 4, matrices in cache, ns a block (the previous kernel → this one): Q4_1
 * 3072 × 576 3.55 → 1.93, Q4_0 576 × 1536 2.41 → 1.62, Q8_0 4096 × 576 2.00 → 1.65 (docs/quantization.md).
 * This is the fp32-activation path: the reference, and the batch-1 path where GENMODELS_NATIVE_QDOT=fp32 or the
 * build has no int8 dot. By default batch-1 products take int8 activations (qdot8.c, llama.cpp's scheme), which
 * round x (|x̂ − x| ≤ d/2 a block) and stream the rows one at a time: ~1.4x faster decode steps.
 */
#include "common.h"
#include "quant.h"

#ifdef GM_AVX2
/* xsum[j] = Σ_{i<32} x[32 j + i] for the K / 32 blocks of x */
void qgemv_block_sums(const float *x, int64_t K, float *xsum) {
    for (int64_t j = 0; j < K / GM_QK; j++) {
        const float *xb = x + j * GM_QK;
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                                 _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
        xsum[j] = hsum8(s);
    }
}

#if defined(__AVX512F__)
typedef __m512 vec;
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSET1(v) _mm512_set1_ps(v)
INLINE float vsum(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Σ_i q_i · x_i of one Q4_0 / Q4_1 block (32 values) as a 16-lane vector (Q4_1: its min is added apart, m · s_j) */
INLINE __m512 block_dot(const uint8_t *b, int64_t type, const float *xb) {
    const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
    /* byte i: value i (low nibble), value i + 16 (high nibble) */
    const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + (type == GM_Q4_1 ? 4 : 2))));
    const __m512 T = type == GM_Q4_0 ? _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)
                                     : _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 lo = _mm512_permutexvar_ps(w, T), hi = _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4), T);
    return _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
}
#else
typedef __m256 vec;
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSET1(v) _mm256_set1_ps(v)
INLINE float vsum(__m256 v) { return hsum8(v); }

INLINE __m256 i8x8_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

INLINE __m256 block_dot(const uint8_t *b, int64_t type, const float *xb) {
    /* values 0..15 and 16..31 as signed bytes */
    const __m128i raw = _mm_loadu_si128((const __m128i *)(b + (type == GM_Q4_1 ? 4 : 2))), m15 = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(raw, m15), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m15);
    if (type == GM_Q4_0) lo = _mm_sub_epi8(lo, _mm_set1_epi8(8)), hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
    __m256 s = _mm256_mul_ps(i8x8_ps(lo), _mm256_loadu_ps(xb));
    s = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xb + 8), s);
    s = _mm256_fmadd_ps(i8x8_ps(hi), _mm256_loadu_ps(xb + 16), s);
    return _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xb + 24), s);
}
#endif

/* bytes of a 32-value block (a constant where the format is) */
INLINE int64_t bytes32(int64_t type) { return type == GM_Q4_1 ? 20 : 18; }

/* R rows (1..4) at row pointers r[·]: out[·] = Σ_j d_j · block_dot + m_j · xsum[j]; R independent accumulator
 * chains, x's block read once for all of them. Every other block, the same place `ahead` bytes on in each row is
 * prefetched (the next group of rows: one line in flight per row beyond what the hardware streams ask for) —
 * SmolLM2's Q4_1 step on one loaded core: 15.9 -> 11.7 ms CPU; 8 or 16 rows ahead, or NTA, the same. */
INLINE void dot_rows(const uint8_t *const *r, const int R, int64_t type, const float *x, const float *xsum, int64_t nb,
                     float *out, int64_t ahead) {
    const int64_t bb = bytes32(type);
    vec a[4] = {VZERO(), VZERO(), VZERO(), VZERO()};
    __m128 mm = _mm_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        const float *xb = x + j * GM_QK;
        float ms[4];
        if ((j & 1) == 0) /* a hint: never faults, past the end of W too */
            for (int i = 0; i < 4; i++) _mm_prefetch((const char *)(r[i] + ahead + j * bb), _MM_HINT_T0);
        for (int i = 0; i < R; i++) {
            const uint8_t *b = r[i] + j * bb;
            a[i] = VFMA(VSET1(half_to_float(b)), block_dot(b, type, xb), a[i]);
            if (type == GM_Q4_1) ms[i] = half_to_float(b + 2);
        }
        if (type == GM_Q4_1) {
            for (int i = R; i < 4; i++) ms[i] = 0.0f;
            mm = _mm_fmadd_ps(_mm_loadu_ps(ms), _mm_set1_ps(xsum[j]), mm);
        }
    }
    float mo[4];
    _mm_storeu_ps(mo, mm);
    for (int i = 0; i < R; i++) out[i] = vsum(a[i]) + (type == GM_Q4_1 ? mo[i] : 0.0f);
}

/* Rows [n0, n1) of y (+)= W x + bias for one format (a constant after inlining: no branch per block) */
INLINE void rows_of(const int64_t type, const float *x, const float *xsum, int64_t K, const uint8_t *Wq,
                    const float *bias, float *y, int64_t n0, int64_t n1, int accumulate) {
    const int64_t nb = K / GM_QK, row_bytes = nb * bytes32(type);
    for (int64_t n = n0; n < n1; n += 4) {
        const uint8_t *r[4] = {Wq + n * row_bytes, Wq + (n + 1) * row_bytes, Wq + (n + 2) * row_bytes, Wq + (n + 3) * row_bytes};
        float v[4];
        const int R = n1 - n < 4 ? (int)(n1 - n) : 4;
        if (R == 4) dot_rows(r, 4, type, x, xsum, nb, v, 4 * row_bytes);
        else if (R == 3) dot_rows(r, 3, type, x, xsum, nb, v, 4 * row_bytes);
        else if (R == 2) dot_rows(r, 2, type, x, xsum, nb, v, 4 * row_bytes);
        else dot_rows(r, 1, type, x, xsum, nb, v, 4 * row_bytes);
        for (int i = 0; i < R; i++) {
            const float t = v[i] + (bias ? bias[n + i] : 0.0f);
            y[n + i] = accumulate ? y[n + i] + t : t;
        }
    }
}

/* One Q8_0 row of blocks · x (K,), one row at a time: Σ_j d_j · Σ_i q_ji x_ji (8 lanes a step). Q8_0 keeps this
 * loop rather than the 4-row kernel above: at 2 threads it streams faster — SmolLM2's Q8_0 decode on the idle
 * 2-core Zen 4 measured 143.6 tok/s with it against 102.4 with the 4-row kernel (same sitting, 64 tokens),
 * though the 4-row kernel was faster on one core with the matrix in cache (2.00 -> 1.65 ns a block). */
static float q8_dot_row(const uint8_t *row, const float *x, int64_t K) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < K / GM_QK; j++) {
        const uint8_t *b = row + j * 34;
        const float *xb = x + j * GM_QK;
        __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2)))),
                                 _mm256_loadu_ps(xb));
        for (int i = 1; i < 4; i++)
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i)))),
                                _mm256_loadu_ps(xb + 8 * i), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(b)), s, acc);
    }
    return hsum8(acc);
}

/* Rows [n0, n1) of y (N,) (+)= W x + bias, W (N, K / 32 blocks of `type`: Q8_0, Q4_0 or Q4_1); xsum from
 * qgemv_block_sums for Q4_1 (unused otherwise). */
void qgemv_rows(const float *x, const float *xsum, int64_t K, const uint8_t *Wq, int64_t type, const float *bias,
                float *y, int64_t n0, int64_t n1, int accumulate) {
    switch (type) {
    case GM_Q8_0:
        for (int64_t n = n0; n < n1; n++) {
            const float t = q8_dot_row(Wq + n * (K / GM_QK) * 34, x, K) + (bias ? bias[n] : 0.0f);
            y[n] = accumulate ? y[n] + t : t;
        }
        break;
    case GM_Q4_0: rows_of(GM_Q4_0, x, xsum, K, Wq, bias, y, n0, n1, accumulate); break;
    default: rows_of(GM_Q4_1, x, xsum, K, Wq, bias, y, n0, n1, accumulate); break;
    }
}
#endif
