/* Batch-1 quantised products with int8 activations (llama.cpp's scheme, ggml_vec_dot_q4_1_q8_1 and kin): x is
 * quantised once per product to blocks of 32 (qdot8_quantise),
 *
 *     d_j = max_i |x_j,i| / 127,   q_j,i = round_half_even(x_j,i · (1 / d_j))  ∈ [−127, 127]   (d_j = 0: q = 0)
 *
 * and each output row n is the fp32 sum over its blocks j of exact integer block dots:
 *
 *     Q8_0: y[n] = Σ_j (d_nj d_j) · Σ_i w_nji q_ji
 *     Q4_0: y[n] = Σ_j (d_nj d_j) · (Σ_i w_nji q_ji − 8 Σ_i q_ji)         (w the nibble 0..15)
 *     Q4_1: y[n] = Σ_j (d_nj d_j) · Σ_i w_nji q_ji + m_nj · (d_j Σ_i q_ji)
 *
 * i.e. y = dequantise(W) · x̂ with x̂_j,i = d_j q_j,i, up to the fp32 summation order (~1e-7 relative;
 * tests/native/test_qdot8.py holds it to 1e-5 of the fp64 product). Its distance from the fp32-activation
 * product (qgemv.c) is that of x̂ from x: |x̂ − x| ≤ d_j / 2 element-wise, so
 * |y8[n] − y32[n]| ≤ Σ_j (d_j / 2) Σ_i |W_nji| (+ fp32 rounding), the bound the tests check.
 *
 * The block dot Σ w·q (w unsigned: a nibble, or |w| of Q8_0 with q given w's sign) sums groups of 4 bytes into
 * 8 int32 lanes: VPDPBUSD (AVX512-VNNI with VL, or AVX-VNNI) where the build has it, else VPMADDUBSW + VPMADDWD
 * (AVX2; pairs ≤ 2·128·127 < 2¹⁵, no saturation). Q4_0's −8 Σ q enters as the lanes' starting value (−8 ×
 * the same 4-byte group sums of q, computed once per product); Q4_1's m · (d Σ q) comes from the same fp16 →
 * fp32 conversion as the block's scale (q4_row1). Rows go one at a time (one sequential stream each, the row 4
 * on prefetched): from DRAM ~2x faster than qgemv.c's 4 rows side by side on the loaded Zen 4, where the 4-row
 * int8 kernel was no faster than fp32 (SmolLM2's Q4_1 step, 1 thread: fp32 9.7, int8 4-row 8.7, int8 1-row
 * 6.5-7.4 ms CPU; docs/quantization.md).
 *
 * Which path (GENMODELS_NATIVE_QDOT, read once when the library first computes a batch-1 product, or
 * gm_qdot_mode): 2 the VNNI dot (default where built), 1 the AVX2 dot (the forced fallback: the path of
 * Zen 3 / Haswell, run here by the tests), 0 fp32 activations (qgemv.c, the reference). A mode the build
 * lacks falls to the best one below it.
 */
#include "common.h"
#include "quant.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { QDOT_FP32 = 0, QDOT_AVX2 = 1, QDOT_VNNI = 2 };

#if defined(GM_AVX2) && defined(__F16C__)
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define QDOT_BEST QDOT_VNNI
#else
#define QDOT_BEST QDOT_AVX2
#endif
#else
#define QDOT_BEST QDOT_FP32
#endif

static int qdot_mode = -1; /* -1: not read yet */

static int clamp_mode(int m) { return m < 0 ? QDOT_BEST : m > QDOT_BEST ? QDOT_BEST : m; }

/* GENMODELS_NATIVE_QDOT: int8 (the best int8 dot; unset: the same) | avx2 | fp32, case and surrounding spaces
 * ignored; any other value: fp32, the reference (native/switches.py refuses one first: every library() call checks) */
static int env_is(const char *e, const char *word) {
    while (*e && strchr(" \t\n\r", *e)) e++;
    size_t n = strlen(word);
    if (strncasecmp(e, word, n)) return 0;
    for (e += n; *e && strchr(" \t\n\r", *e); e++) {}
    return *e == 0;
}

static int env_mode(void) {
    const char *e = getenv("GENMODELS_NATIVE_QDOT");
    if (!e || env_is(e, "") || env_is(e, "int8")) return QDOT_BEST;
    if (env_is(e, "avx2")) return clamp_mode(QDOT_AVX2);
    return QDOT_FP32;
}

/* mode ≥ 0: set it (capped at what the build has); −1: only read it; −2: take GENMODELS_NATIVE_QDOT again.
 * Returns the mode in force. */
GM_API int gm_qdot_mode(int mode) {
    if (mode >= 0) qdot_mode = clamp_mode(mode);
    else if (qdot_mode < 0 || mode == -2) qdot_mode = env_mode();
    return qdot_mode;
}

#if defined(GM_AVX2) && defined(__F16C__)
/* x quantised (qdot8_quantise), and the layouts the row kernels read it in */
typedef struct {
    int8_t *q;  /* (K,) */
    int8_t *lo; /* (nb, 64): values 0..15 twice, then 16..31 twice (an odd last block of q4_row1) */
    float *d;   /* (nb,) */
    int32_t *c; /* (nb, 8): −8 × the 4-byte group sums of the lo / hi halves (Q4_0's start) */
    float *s;   /* (nb,): d · Σ q (Q4_1's min term) */
    int8_t *pr; /* (nb / 2, 64): blocks 2p, 2p + 1 as [2p 0..15 | 2p+1 0..15 | 2p 16..31 | 2p+1 16..31] (one row, 2 blocks) */
    int32_t *pc; /* (nb / 2, 8): −8 × their 4-byte group sums */
    float *ps;  /* (nb / 2, 4): d_2p, d_2p Σq_2p, d_2p+1, d_2p+1 Σq_2p+1 */
} QX;

/* this thread's buffer for the quantised x, grown as needed (kept for the thread's life) */
static int qx_buffer(int64_t K, QX *qx) {
    static __thread void *buf;
    static __thread int64_t cap;
    const int64_t nb = K / GM_QK, bytes = nb * 32 + nb * 64 + K + nb * 4 + nb * 4 + nb / 2 * 112;
    if (bytes > cap) {
        free(buf);
        buf = aligned_alloc(64, (size_t)((bytes + 63) / 64 * 64));
        cap = buf ? bytes : 0;
    }
    if (!buf) return -1;
    qx->c = (int32_t *)buf; /* 32-byte aligned pieces first */
    qx->lo = (int8_t *)buf + nb * 32;
    qx->q = (int8_t *)buf + nb * 96;
    qx->d = (float *)((char *)buf + nb * 96 + K);
    qx->s = qx->d + nb;
    qx->pr = (int8_t *)(qx->s + nb);
    qx->pc = (int32_t *)(qx->pr + nb / 2 * 64);
    qx->ps = (float *)(qx->pc + nb / 2 * 8);
    return 0;
}

/* 8 lanes: lane l = Σ_{t<4} u[4l + t] · s[4l + t] (+ acc), u unsigned and s signed bytes */
INLINE __m256i dot_vnni(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
INLINE __m256i dot_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

INLINE int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

/* x (K,) -> qx: the scales, the int8 values, and per block the group sums (see the top) */
static void qdot8_quantise(const float *x, int64_t K, QX *qx) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t j = 0; j < K / GM_QK; j++) {
        const float *xb = x + j * GM_QK;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int t = 0; t < 4; t++) v[t] = _mm256_loadu_ps(xb + 8 * t), amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[t]));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256i i32[4];
        for (int t = 0; t < 4; t++) i32[t] = _mm256_cvtps_epi32(_mm256_mul_ps(v[t], _mm256_set1_ps(id))); /* half-even */
        /* packs work per 128-bit lane: 0 1 | 2 3 -> bytes in order 0,2,1,3 x 4: permute the dwords back */
        const __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
        const __m256i q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qx->q + j * GM_QK), q);
        qx->d[j] = d;
        const __m256i l = _mm256_permute4x64_epi64(q, 0x44), h = _mm256_permute4x64_epi64(q, 0xee); /* 0..15 twice, 16..31 twice */
        _mm256_store_si256((__m256i *)(qx->lo + 64 * j), l);
        _mm256_store_si256((__m256i *)(qx->lo + 64 * j + 32), h);
        const __m256i one = _mm256_set1_epi8(1), g = dot_avx2(dot_avx2(_mm256_setzero_si256(), one, l), one, h);
        _mm256_store_si256((__m256i *)(qx->c + 8 * j), _mm256_mullo_epi32(g, _mm256_set1_epi32(-8)));
        qx->s[j] = d * (float)hsum_i32(g) * 0.5f; /* g holds each sum twice */
    }
    for (int64_t p = 0; p < K / GM_QK / 2; p++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(qx->q + 64 * p)), b = _mm256_loadu_si256((const __m256i *)(qx->q + 64 * p + 32));
        const __m256i l = _mm256_permute2x128_si256(a, b, 0x20), h = _mm256_permute2x128_si256(a, b, 0x31);
        _mm256_storeu_si256((__m256i *)(qx->pr + 64 * p), l);
        _mm256_storeu_si256((__m256i *)(qx->pr + 64 * p + 32), h);
        const __m256i one = _mm256_set1_epi8(1), g = dot_avx2(dot_avx2(_mm256_setzero_si256(), one, l), one, h);
        _mm256_storeu_si256((__m256i *)(qx->pc + 8 * p), _mm256_mullo_epi32(g, _mm256_set1_epi32(-8)));
        const float ps[4] = {qx->d[2 * p], qx->s[2 * p], qx->d[2 * p + 1], qx->s[2 * p + 1]};
        memcpy(qx->ps + 4 * p, ps, sizeof ps);
    }
}


/* One row of Q4_0 / Q4_1 blocks · the quantised x, two blocks a 256-bit register: [block j's 16 bytes | j+1's], whose
 * low nibbles dot x's values 0..15 of the two blocks and high nibbles 16..31 (qx->pr: that layout), so lanes 0..3 sum
 * block j and 4..7 block j + 1; (d, m) of both in one conversion, times (d_x, d_x Σq) of theirs: the two scales and
 * the two min terms (Q4_0's −8 Σq is the dot's start, qx->pc). One row at a time, one sequential stream: from DRAM
 * ~2x faster than 4 rows side by side (qgemv.c's order) on the loaded Zen 4. An odd last block goes alone. */
#define Q4_ROW1(NAME, DOT)                                                                                          \
    INLINE float NAME(const uint8_t *row, const int64_t type, const QX *qx, int64_t nb, int64_t ahead) {             \
        const int64_t bb = type == GM_Q4_1 ? 20 : 18, off = type == GM_Q4_1 ? 4 : 2;                                \
        const __m256i m4 = _mm256_set1_epi8(15), spread = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);              \
        __m256 a = _mm256_setzero_ps();                                                                             \
        __m128 mm = _mm_setzero_ps();                                                                               \
        int64_t j = 0;                                                                                              \
        for (; j + 2 <= nb; j += 2) {                                                                               \
            const uint8_t *b = row + j * bb;                                                                        \
            _mm_prefetch((const char *)(b + ahead), _MM_HINT_T0);                                                   \
            int32_t h2[2];                                                                                          \
            memcpy(h2, b, 4), memcpy(h2 + 1, b + bb, 4);                                                            \
            const __m128 sc = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)h2)),                        \
                                         _mm_loadu_ps(qx->ps + 2 * j)); /* d dx, m dxΣq, (block j + 1) */          \
            if (type == GM_Q4_1) mm = _mm_add_ps(mm, sc);                                                          \
            const __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b + off))), \
                                                      _mm_loadu_si128((const __m128i *)(b + bb + off)), 1);        \
            const __m256i start = type == GM_Q4_0 ? _mm256_loadu_si256((const __m256i *)(qx->pc + 4 * j))           \
                                                  : _mm256_setzero_si256();                                        \
            const __m256i p = DOT(DOT(start, _mm256_and_si256(w, m4), _mm256_loadu_si256((const __m256i *)(qx->pr + 32 * j))), \
                                  _mm256_and_si256(_mm256_srli_epi16(w, 4), m4),                                   \
                                  _mm256_loadu_si256((const __m256i *)(qx->pr + 32 * j + 32)));                    \
            a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), spread), a); \
        }                                                                                                           \
        float mv[4];                                                                                                \
        _mm_storeu_ps(mv, mm);                                                                                      \
        float y = hsum8(a) + mv[1] + mv[3];                                                                         \
        if (j < nb) { /* the odd last block: lanes 0..3 of the lo layout */                                        \
            const uint8_t *b = row + j * bb;                                                                        \
            const __m256i w = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b + off)));                \
            const __m256i start = type == GM_Q4_0 ? _mm256_load_si256((const __m256i *)(qx->c + 8 * j))             \
                                                  : _mm256_setzero_si256();                                        \
            const __m256i p = DOT(DOT(start, _mm256_and_si256(w, m4), _mm256_load_si256((const __m256i *)(qx->lo + 64 * j))), \
                                  _mm256_and_si256(_mm256_srli_epi16(w, 4), m4),                                   \
                                  _mm256_load_si256((const __m256i *)(qx->lo + 64 * j + 32)));                     \
            const __m128i p4 = _mm256_castsi256_si128(p);                                                           \
            __m128i t = _mm_add_epi32(p4, _mm_shuffle_epi32(p4, 0x4e));                                             \
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));                                                       \
            y += (float)_mm_cvtsi128_si32(t) * (half_to_float(b) * qx->d[j]);                                       \
            if (type == GM_Q4_1) y += half_to_float(b + 2) * qx->s[j];                                              \
        }                                                                                                           \
        return y;                                                                                                   \
    }
Q4_ROW1(q4_row1_vnni, dot_vnni)
Q4_ROW1(q4_row1_avx2, dot_avx2)

/* One row of Q8_0 blocks · the quantised x: Σ_j (d_nj d_j) Σ_i |w| · (q with w's sign), two blocks a step (their
 * scales in one conversion, an accumulator each: the FMA's latency is not the bound). */
INLINE __m256 q8_block(const uint8_t *b, __m256i xq, __m256 scale, __m256 acc, const int vnni) {
    const __m256i w = _mm256_loadu_si256((const __m256i *)(b + 2)), u = _mm256_abs_epi8(w), s = _mm256_sign_epi8(xq, w);
    const __m256i p = vnni ? dot_vnni(_mm256_setzero_si256(), u, s) : dot_avx2(_mm256_setzero_si256(), u, s);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc);
}

INLINE float q8_row1(const uint8_t *row, const QX *qx, int64_t nb, int64_t ahead, const int vnni) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= nb; j += 2) {
        const uint8_t *b = row + j * 34;
        _mm_prefetch((const char *)(b + ahead), _MM_HINT_T0);
        uint16_t h2[4] = {0, 0, 0, 0};
        memcpy(h2, b, 2), memcpy(h2 + 1, b + 34, 2);
        const __m128 sc = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)h2)),
                                     _mm_castpd_ps(_mm_load_sd((const double *)(qx->d + j))));
        a0 = q8_block(b, _mm256_loadu_si256((const __m256i *)(qx->q + j * GM_QK)), _mm256_broadcastss_ps(sc), a0, vnni);
        a1 = q8_block(b + 34, _mm256_loadu_si256((const __m256i *)(qx->q + j * GM_QK + GM_QK)),
                      _mm256_broadcastss_ps(_mm_movehdup_ps(sc)), a1, vnni);
    }
    if (j < nb) /* an odd last block */
        a0 = q8_block(row + j * 34, _mm256_loadu_si256((const __m256i *)(qx->q + j * GM_QK)),
                      _mm256_set1_ps(half_to_float(row + j * 34) * qx->d[j]), a0, vnni);
    return hsum8(_mm256_add_ps(a0, a1));
}

/* Rows [n0, n1) of y (+)= W x̂ + bias, one row at a time (one sequential stream; the rows QDOT_AHEAD on prefetched) */
#define QDOT_AHEAD 4
INLINE void rows_of(const int mode, const int64_t type, const QX *qx, int64_t K, const uint8_t *Wq, const float *bias,
                    float *y, int64_t n0, int64_t n1, int accumulate) {
    const int64_t nb = K / GM_QK, row_bytes = nb * quant_block_bytes(type), ahead = QDOT_AHEAD * row_bytes;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *r = Wq + n * row_bytes;
        float v;
        if (type == GM_Q8_0) v = mode == QDOT_VNNI ? q8_row1(r, qx, nb, ahead, 1) : q8_row1(r, qx, nb, ahead, 0);
        else v = mode == QDOT_VNNI ? q4_row1_vnni(r, type, qx, nb, ahead) : q4_row1_avx2(r, type, qx, nb, ahead);
        const float t = v + (bias ? bias[n] : 0.0f);
        y[n] = accumulate ? y[n] + t : t;
    }
}

static void qdot8_rows(int mode, int64_t type, const QX *qx, int64_t K, const uint8_t *Wq, const float *bias, float *y,
                       int64_t n0, int64_t n1, int accumulate) {
    switch (type) { /* the format a constant in each copy: no branch per block */
    case GM_Q8_0: rows_of(mode, GM_Q8_0, qx, K, Wq, bias, y, n0, n1, accumulate); break;
    case GM_Q4_0: rows_of(mode, GM_Q4_0, qx, K, Wq, bias, y, n0, n1, accumulate); break;
    default: rows_of(mode, GM_Q4_1, qx, K, Wq, bias, y, n0, n1, accumulate); break;
    }
}
#endif

/* Batch 1 inside a parallel region: y (N,) (+)= W x + bias with int8 activations, W in Q8_0 / Q4_0 / Q4_1 blocks.
 * Returns 0 (nothing done) where the mode is fp32 or the build has no int8 dot; the caller then runs qgemv.c. */
int qdot8_team(const float *x, int64_t K, const uint8_t *W, int64_t type, const float *bias, float *y, int64_t N,
               int accumulate) {
    const int mode = gm_qdot_mode(-1);
    if (mode == QDOT_FP32) return 0;
#if defined(GM_AVX2) && defined(__F16C__)
    QX qx;
    if (qx_buffer(K, &qx)) abort(); /* out of memory for a few KB */
    qdot8_quantise(x, K, &qx); /* each thread its own copy: no barrier */
    const int64_t nb = (N + 7) / 8;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++)
        qdot8_rows(mode, type, &qx, K, W, bias, y, b * 8, b * 8 + 8 < N ? b * 8 + 8 : N, accumulate);
    return 1;
#else
    (void)x, (void)K, (void)W, (void)type, (void)bias, (void)y, (void)N, (void)accumulate;
    return 0;
#endif
}

/* For the tests: x (K,) quantised as the products do -> q (K,) int8 and d (K / 32,) fp32; -1 without an int8 dot */
GM_API int gm_qdot_quantise(const float *x, int64_t K, int8_t *q, float *d) {
#if defined(GM_AVX2) && defined(__F16C__)
    QX qx;
    if (K % GM_QK || qx_buffer(K, &qx)) return -1;
    qdot8_quantise(x, K, &qx);
    memcpy(q, qx.q, (size_t)K);
    memcpy(d, qx.d, (size_t)(K / GM_QK) * sizeof(float));
    return 0;
#else
    (void)x, (void)K, (void)q, (void)d;
    return -1;
#endif
}
