/* Unmasked multi-head attention with narrow heads (d = 8 or 16), forward and backward (training; the
 * forward also serves FastUNet's sampling).
 *
 *     S = s·Q Kᵀ   P = softmax_rows(S)   O = P V                       (Vaswani et al., 2017, eq. 1)
 *     L_i = log Σ_j exp S_ij                        (saved by the forward: the backward recomputes P)
 *     δ_i = Σ_c dO_ic O_ic                          (= Σ_j P_ij dP_ij)
 *     dP = dO Vᵀ   dS = P ⊙ (dP − δ)   dQ = s·dS K   dK = s·dSᵀ Q   dV = Pᵀ dO
 *                                                    (the recomputing backward of FlashAttention,
 *                                                     Dao et al., 2022, algorithm 4)
 *
 * Why: a diffusion UNet's pixel attention has 16 heads of width 8 over 256 pixels. Every product
 * above then has d = 8 as its inner or its outer dimension, which PyTorch's fused CPU kernel runs
 * as d-wide GEMM slices far below the machine's peak (36% of a training step was attention).
 * Here each (sample, head) pair is one task; the vector lanes run along the sequence, so the
 * d-wide loops are unrolled into registers and every FMA is a full vector:
 *
 *   forward  (lanes = VW queries):  Sᵀ[j] = Σ_c K_jc·(s Qᵀ)[c]; column softmax; Oᵀ[c] = Σ_j V_jc·Pᵀ[j]
 *   backward (lanes = VW keys):     pass 1 over queries i: S, dP, P, dS of row i for VW keys, and
 *                                   dQ_i += dS_i·K (lane partial sums, reduced once at the end);
 *                                   pass 2: dVᵀ[c] = Σ_i dO_ic·P_i, dKᵀ[c] = s·Σ_i Q_ic·dS_i
 *
 * A short last block is padded with zero queries/keys, whose lanes are never written out; in the backward
 * the padding keys' P is masked to 0 (their score 0 is not −∞: e^{0−L} would overflow for a row whose
 * scores are all below −88, and inf · 0 would poison dQ).
 * Tensors are (B, H, T, d) views given by their strides in floats (b, h, t; the d elements of a
 * row contiguous), so q/k/v may be slices of one fused projection; L is (B, H, T) contiguous.
 * genmodels/native/attention.py holds the autograd function; tests/native/test_attention_native.py
 * holds it as accurate as PyTorch's kernel against float64.
 */
#include <stdlib.h>

#include "common.h"

#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VW * 4), aligned(4)));

#define VS(x) ((vf){0} + (x)) /* x in every lane */
#define LD(p) (*(const vf *)(p))
#define ST(p, v) (*(vf *)(p) = (v))

INLINE vf vmax(vf a, vf b) {
    vi m = a > b;
    return (vf)((m & (vi)a) | (~m & (vi)b));
}

/* e^x as Cephes' expf (common.h's exp8), written once for any vector width; 0 below −87 (where the
 * exponent bits would underflow; e^−87 ≈ 1.6e−38, so a weight there is 0 as in PyTorch's softmax). */
INLINE vf vexp(vf x) {
    vi under = x < -87.0f; /* false for a NaN, which goes through */
    x = vmax(VS(-87.0f), x); /* this operand order lets a NaN through (vmax returns b unless a > b) */
    vi hi = x > 88.3762626647949f;
    x = (vf)((hi & (vi)VS(88.3762626647949f)) | (~hi & (vi)x));
    vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf y = VS(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return (vf)(~under & (vi)(y * (vf)e));
}

/* All bits set in the first n lanes, 0 in the rest: a short last block's padding lanes. */
INLINE vi lanes_below(int64_t n) {
    vi m;
    for (int l = 0; l < VW; l++) m[l] = l < n ? -1 : 0;
    return m;
}

INLINE float vsum(vf v) {
    float s = 0.0f;
    for (int l = 0; l < VW; l++) s += v[l];
    return s;
}

/* Accumulators one register sweep keeps (of 32 AVX-512 or 16 AVX2 registers): wider heads take several sweeps. */
#define SWEEP (VW == 16 ? 16 : 8)
#define SWEEP_COLS(D) ((D) < SWEEP ? (D) : SWEEP)

/* out[a] = Σ_i w_i · x[i·xt + a] for a < K (lanes: w_i is row i of a (T, VW) buffer): K accumulators held
 * in registers across the whole sweep (K is a constant at each inlined call site). */
INLINE void column_sweep(int64_t T, const float *w, const float *x, int64_t xt, const int K, vf *out) {
    vf acc[SWEEP];
    for (int a = 0; a < K; a++) acc[a] = (vf){0};
    for (int64_t i = 0; i < T; i++) {
        vf p = LD(w + i * VW);
        const float *xi = x + i * xt;
        for (int a = 0; a < K; a++) acc[a] += p * xi[a];
    }
    for (int a = 0; a < K; a++) out[a] = acc[a];
}

static float *scratch(size_t floats) {
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* ---- forward: one (sample, head) ------------------------------------------------------------ */
#define DEFINE_FORWARD(D)                                                                                  \
    static void forward_##D(int64_t T, float scale, const float *q, const float *k, const float *v,        \
                            int64_t qt, int64_t kt, int64_t vt, float *o, int64_t ot, float *lse,          \
                            float *sT /* (T, VW) */) {                                                     \
        for (int64_t i0 = 0; i0 < T; i0 += VW) {                                                          \
            int64_t n = T - i0 < VW ? T - i0 : VW;                                                         \
            vf qT[D]; /* s·Qᵀ of this block: (d, VW) */                                                   \
            for (int c = 0; c < D; c++) {                                                                  \
                qT[c] = (vf){0};                                                                           \
                for (int64_t l = 0; l < n; l++) qT[c][l] = scale * q[(i0 + l) * qt + c];                   \
            }                                                                                              \
            vf m = (vf){0} - INFINITY;                                                                     \
            int64_t j = 0;                                                                                 \
            for (; j + 4 <= T; j += 4) {                                                                   \
                const float *k0 = k + j * kt, *k1 = k0 + kt, *k2 = k1 + kt, *k3 = k2 + kt;                 \
                vf a0 = qT[0] * k0[0], a1 = qT[0] * k1[0], a2 = qT[0] * k2[0], a3 = qT[0] * k3[0];         \
                for (int c = 1; c < D; c++) {                                                              \
                    a0 += qT[c] * k0[c]; a1 += qT[c] * k1[c]; a2 += qT[c] * k2[c]; a3 += qT[c] * k3[c];    \
                }                                                                                          \
                ST(sT + j * VW, a0); ST(sT + (j + 1) * VW, a1); ST(sT + (j + 2) * VW, a2);                 \
                ST(sT + (j + 3) * VW, a3);                                                                 \
                m = vmax(m, vmax(vmax(a0, a1), vmax(a2, a3)));                                             \
            }                                                                                              \
            for (; j < T; j++) {                                                                           \
                vf a = qT[0] * k[j * kt];                                                                  \
                for (int c = 1; c < D; c++) a += qT[c] * k[j * kt + c];                                    \
                ST(sT + j * VW, a);                                                                        \
                m = vmax(m, a);                                                                            \
            }                                                                                              \
            vf l = (vf){0};                                                                                \
            for (j = 0; j < T; j++) {                                                                      \
                vf p = vexp(LD(sT + j * VW) - m);                                                          \
                ST(sT + j * VW, p);                                                                        \
                l += p;                                                                                    \
            }                                                                                              \
            vf oT[D];                                                                                      \
            for (int c0 = 0; c0 < D; c0 += SWEEP_COLS(D))                                                  \
                column_sweep(T, sT, v + c0, vt, SWEEP_COLS(D), oT + c0);                                   \
            vf inv = 1.0f / l;                                                                             \
            for (int64_t li = 0; li < n; li++) {                                                           \
                float *oi = o + (i0 + li) * ot;                                                            \
                for (int c = 0; c < D; c++) oi[c] = oT[c][li] * inv[li];                                   \
                lse[i0 + li] = m[li] + logf(l[li]);                                                        \
            }                                                                                              \
        }                                                                                                  \
    }

/* ---- backward: one (sample, head) ----------------------------------------------------------- */
#define DEFINE_BACKWARD(D)                                                                                 \
    static void backward_##D(int64_t T, float scale, const float *q, const float *k, const float *v,       \
                             const float *o, const float *dout, const float *lse, const int64_t *rs,       \
                             float *dq, float *dk, float *dv, float *work) {                               \
        const int64_t qt = rs[0], kt = rs[1], vt = rs[2], ot = rs[3], dt = rs[4];                          \
        const int64_t dqt = rs[5], dkt = rs[6], dvt = rs[7];                                               \
        float *P = work, *dS = P + T * VW, *delta = dS + T * VW, *dqacc = delta + T; /* dqacc (T, D, VW) */\
        for (int64_t i = 0; i < T; i++) {                                                                  \
            float s = 0.0f;                                                                                \
            for (int c = 0; c < D; c++) s += dout[i * dt + c] * o[i * ot + c];                             \
            delta[i] = s;                                                                                  \
        }                                                                                                  \
        memset(dqacc, 0, sizeof(float) * T * D * VW);                                                      \
        for (int64_t j0 = 0; j0 < T; j0 += VW) {                                                          \
            int64_t n = T - j0 < VW ? T - j0 : VW;                                                         \
            const vi real = lanes_below(n); /* a padding key must get P = 0: its score 0 is not −∞ */   \
            vf kT[D], vT[D]; /* s·Kᵀ and Vᵀ of this key block: (d, VW) */                                  \
            for (int c = 0; c < D; c++) {                                                                  \
                kT[c] = (vf){0}; vT[c] = (vf){0};                                                          \
                for (int64_t l = 0; l < n; l++) {                                                          \
                    kT[c][l] = scale * k[(j0 + l) * kt + c];                                               \
                    vT[c][l] = v[(j0 + l) * vt + c];                                                       \
                }                                                                                          \
            }                                                                                              \
            for (int64_t i = 0; i < T; i++) { /* pass 1: row i of S, dP, P, dS; dQ_i partial sums */      \
                const float *qi = q + i * qt, *gi = dout + i * dt;                                         \
                vf s = kT[0] * qi[0], dp = vT[0] * gi[0], s1 = kT[1] * qi[1], dp1 = vT[1] * gi[1];         \
                for (int c = 2; c < D; c += 2) { /* two partial sums each: half the FMA latency chain */     \
                    s += kT[c] * qi[c]; dp += vT[c] * gi[c]; s1 += kT[c + 1] * qi[c + 1]; dp1 += vT[c + 1] * gi[c + 1]; \
                }                                                                                          \
                s += s1; dp += dp1;                                                                        \
                vf p = (vf)(real & (vi)vexp(s - lse[i])); /* (e^{0−L} overflows when L < −88) */           \
                vf ds = p * (dp - delta[i]);                                                               \
                ST(P + i * VW, p); ST(dS + i * VW, ds);                                                    \
                float *acc = dqacc + i * D * VW;                                                           \
                for (int c = 0; c < D; c++) ST(acc + c * VW, LD(acc + c * VW) + ds * kT[c]);               \
            }                                                                                              \
            vf gv[D], gk[D]; /* pass 2: dVᵀ = Σ_i P_i dO_i and dKᵀ/s = Σ_i dS_i Q_i of this key block */   \
            for (int c0 = 0; c0 < D; c0 += SWEEP_COLS(D)) {                                                \
                column_sweep(T, P, dout + c0, dt, SWEEP_COLS(D), gv + c0);                                 \
                column_sweep(T, dS, q + c0, qt, SWEEP_COLS(D), gk + c0);                                   \
            }                                                                                              \
            for (int64_t l = 0; l < n; l++) {                                                              \
                float *dvj = dv + (j0 + l) * dvt, *dkj = dk + (j0 + l) * dkt;                              \
                for (int c = 0; c < D; c++) { dvj[c] = gv[c][l]; dkj[c] = scale * gk[c][l]; }              \
            }                                                                                              \
        }                                                                                                  \
        for (int64_t i = 0; i < T; i++)                                                                    \
            for (int c = 0; c < D; c++) dq[i * dqt + c] = vsum(LD(dqacc + (i * D + c) * VW));              \
    }

DEFINE_FORWARD(8)
DEFINE_FORWARD(16)
DEFINE_BACKWARD(8)
DEFINE_BACKWARD(16)

/* Lanes per vector this library was built with (16: AVX-512, 8 otherwise). */
GM_API int64_t gm_attention_lanes(void) { return VW; }

/* 1 when built for fused multiply-adds on 256-bit or wider vectors (AVX2 + FMA, AVX-512), where this kernel
 * beats PyTorch's; 0 for other builds (SSE only, or another architecture), which stay correct but slower:
 * there the "native" attention kernel hands its inputs to PyTorch. */
GM_API int gm_attention_fast(void) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    return 1;
#else
    return 0;
#endif
}

/* O (B, H, T, d) and L (B, H, T) from Q, K, V; st = strides (b, h, t) of q, k, v, o.
 * Returns 0, 1 for an unsupported d, 2 when scratch memory cannot be allocated. */
GM_API int gm_attention_forward(int64_t B, int64_t H, int64_t T, int64_t D, float scale, const float *q,
                                const float *k, const float *v, float *o, float *lse, const int64_t *st,
                                int n_threads) {
    if (D != 8 && D != 16) return 1;
    int failed = 0;
#pragma omp parallel num_threads(n_threads)
    {
        float *sT = scratch((size_t)T * VW);
        if (!sT) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!sT) continue;
            int64_t b = bh / H, h = bh % H;
            const float *qb = q + b * st[0] + h * st[1], *kb = k + b * st[3] + h * st[4], *vb = v + b * st[6] + h * st[7];
            float *ob = o + b * st[9] + h * st[10], *lb = lse + bh * T;
            if (D == 8) forward_8(T, scale, qb, kb, vb, st[2], st[5], st[8], ob, st[11], lb, sT);
            else forward_16(T, scale, qb, kb, vb, st[2], st[5], st[8], ob, st[11], lb, sT);
        }
        free(sT);
    }
    return failed;
}

/* dQ, dK, dV (B, H, T, d) from Q, K, V, O, dO and L; st = strides (b, h, t) of q, k, v, o, dO, dq, dk, dv. */
GM_API int gm_attention_backward(int64_t B, int64_t H, int64_t T, int64_t D, float scale, const float *q,
                                 const float *k, const float *v, const float *o, const float *dout,
                                 const float *lse, float *dq, float *dk, float *dv, const int64_t *st,
                                 int n_threads) {
    if (D != 8 && D != 16) return 1;
    int failed = 0;
#pragma omp parallel num_threads(n_threads)
    {
        float *work = scratch((size_t)T * (2 * VW + 1 + D * VW));
        if (!work) {
#pragma omp atomic write
            failed = 2;
        }
        int64_t rs[8];
        for (int n = 0; n < 8; n++) rs[n] = st[3 * n + 2];
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!work) continue;
            int64_t b = bh / H, h = bh % H;
#define AT(ptr, n) ((ptr) + b * st[3 * (n)] + h * st[3 * (n) + 1])
            if (D == 8)
                backward_8(T, scale, AT(q, 0), AT(k, 1), AT(v, 2), AT(o, 3), AT(dout, 4), lse + bh * T, rs,
                           AT(dq, 5), AT(dk, 6), AT(dv, 7), work);
            else
                backward_16(T, scale, AT(q, 0), AT(k, 1), AT(v, 2), AT(o, 3), AT(dout, 4), lse + bh * T, rs,
                            AT(dq, 5), AT(dk, 6), AT(dv, 7), work);
#undef AT
        }
        free(work);
    }
    return failed;
}
