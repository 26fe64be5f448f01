#include "common.h"

/* Fused recurrent decode step of a RetNet (Sun et al., 2023, arXiv 2307.08621) with torchscale 0.3.0's
 * conventions (genmodels/nn/retention.py is the definition; genmodels/native/retnet.py the ctypes side,
 * which mirrors the field order of these structs). One call advances every row by one token:
 *
 *   x = E[id]                                                                      (B, D)
 *   per layer:  u = RMSNorm(x);  q = W_Q u, k = W_K u / √d_k, v = W_V u, g = W_G u
 *               q, k ← rotation of interleaved pairs (2i, 2i+1) by n·θ_i, n = the row's position
 *               per head h:  s_n = γ_h s_{n−1} + 1
 *                            S_n = S_{n−1} · γ_h √(s_{n−1}/s_n) + k_nᵀ v_n / √s_n        (d_k, d_v): rank-1
 *                            o = RMSNorm_noaffine(q_n S_n)                                 (d_v,)
 *               x += W_O (swish(g) ⊙ o);   x += fc2(act(fc1 RMSNorm(x)) ⊙ gate RMSNorm(x))
 *   logits = head(RMSNorm(x))                                                      (B, V)
 *
 * The states S (B, H, d_k, d_v) and s (B, H) are the RetentionCache's own tensors, updated in place. A zero
 * state with s = 0 is the empty state: its first step gives S = kᵀv, s = 1, as the PyTorch path does.
 */
typedef struct {
    const float *norm1_w, *q_w, *k_w, *v_w, *g_w, *out_w, *norm2_w, *fc1_w, *gate_w, *fc2_w;
    const float *gamma; /* (H,) γ_h */
    float *state;       /* (B, H, d_k, d_v) S, in place */
    float *scale;       /* (B, H) s, in place */
} gm_retnet_layer;

typedef struct {
    int64_t n_layers, batch, d, n_heads, dk, dv, d_ff, vocab, act, n_threads;
    double norm_eps, retention_eps, key_scale, emb_scale;
    const float *embed, *angle, *final_w, *head_w, *head_b; /* angle (d_k,): θ per channel, pairs repeated */
    gm_retnet_layer *layers;
    float *scratch; /* gm_retnet_scratch_floats() floats */
} gm_retnet;

GM_API int64_t gm_retnet_scratch_floats(const gm_retnet *m) {
    /* x, u, q, k (D each); v, g, y (value width each); fc1, gate, hidden (d_ff each); cos|sin (2 d_k) */
    return m->batch * (4 * m->d + 3 * m->n_heads * m->dv + 3 * m->d_ff + 2 * m->dk);
}

/* cos, sin (d_k each) of the fp32 angles pos · θ_i of one row, as theta_shift computes them; once per step. */
static void rotation_table(float *cs, const float *angle, int64_t dk, int64_t pos) {
    for (int64_t i = 0; i < dk; i++) {
        const float a = (float)pos * angle[i];
        cs[i] = cosf(a);
        cs[dk + i] = sinf(a);
    }
}

/* Rotate one head vector (d_k): (x_{2i}, x_{2i+1}) ← (x_{2i} c − x_{2i+1} s, x_{2i+1} c + x_{2i} s). */
static void rotate_pairs(float *x, const float *cs, int64_t dk) {
    const float *c = cs, *s = cs + dk;
    for (int64_t i = 0; i + 1 < dk; i += 2) {
        const float x0 = x[i], x1 = x[i + 1];
        x[i] = x0 * c[i] - x1 * s[i];
        x[i + 1] = x1 * c[i + 1] + x0 * s[i + 1];
    }
}

/* Inside a parallel region: y_j (M, N_j) = x (M, K) · W_jᵀ for n weights that share the input, their rows split
 * over the team in blocks of 8 as one loop (one barrier instead of n). */
static void linear_team_shared(const float *x, int64_t M, int64_t K, const float *const *W, float *const *y,
                               const int64_t *N, int n) {
    int64_t total = 0;
    for (int j = 0; j < n; j++) total += (N[j] + 7) / 8;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < total; blk++) {
        int j = 0;
        int64_t b = blk;
        while (b >= (N[j] + 7) / 8) b -= (N[j++] + 7) / 8;
        const int64_t n0 = b * 8, n1 = n0 + 8 < N[j] ? n0 + 8 : N[j];
        linear_rows_ld(x, K, M, K, W[j], K, 0, y[j], N[j], n0, n1, 0);
    }
}

/* One head of one row: the rank-1 state update fused with o = q S (one pass over S), then the head norm and
 * the swish gate: y = swish(g) ⊙ o / √(mean(o²) + ε). q, k already rotated (k scaled). */
static void retain_head(const float *restrict q, const float *restrict k, const float *restrict v,
                        const float *restrict g, float *restrict S, float *restrict s, float gamma, int64_t dk,
                        int64_t dv, float eps, float *restrict y) {
    const float s_prev = *s, s_new = s_prev * gamma + 1.0f;
    const float decay = gamma * sqrtf(s_prev / s_new), root = sqrtf(s_new);
    *s = s_new;
    for (int64_t j = 0; j < dv; j++) y[j] = 0.0f;
    for (int64_t i = 0; i < dk; i++) {
        float *restrict row = S + i * dv;
        const float ki = k[i] / root, qi = q[i];
#pragma omp simd
        for (int64_t j = 0; j < dv; j++) {
            const float sij = row[j] * decay + ki * v[j];
            row[j] = sij;
            y[j] += qi * sij;
        }
    }
    float ss = 0.0f;
    for (int64_t j = 0; j < dv; j++) ss += y[j] * y[j];
    const float r = 1.0f / sqrtf(ss / (float)dv + eps);
    for (int64_t j = 0; j < dv; j++) y[j] *= r;
    activate(y, g, y, dv, ACT_SILU); /* y ← swish(g) ⊙ y */
}

/* ids (B,), positions (B,) (each row's rotation position) -> logits (B, V); states advanced in place. Returns 0. */
GM_API int gm_retnet_step(const gm_retnet *m, const int64_t *ids, const int64_t *positions, float *logits) {
    const int64_t B = m->batch, D = m->d, H = m->n_heads, DK = m->dk, DV = m->dv, VD = H * DV, F = m->d_ff;
    float *x = m->scratch, *u = x + B * D, *q = u + B * D, *k = q + B * D, *v = k + B * D, *g = v + B * VD;
    float *y = g + B * VD, *f1 = y + B * VD, *gate = f1 + B * F, *hid = gate + B * F, *rot = hid + B * F;
    const float eps = (float)m->norm_eps, reps = (float)m->retention_eps, kscale = (float)m->key_scale;

#pragma omp parallel num_threads(m->n_threads)
    {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *e = m->embed + ids[b] * D;
            for (int64_t i = 0; i < D; i++) x[b * D + i] = m->emb_scale == 1.0 ? e[i] : e[i] * (float)m->emb_scale;
            rotation_table(rot + b * 2 * DK, m->angle, DK, positions[b]);
        }
        for (int64_t l = 0; l < m->n_layers; l++) {
            const gm_retnet_layer *ly = &m->layers[l];
            norm_rows(x, u, B, D, NORM_RMS, eps, ly->norm1_w, 0);
            {
                const float *const w[4] = {ly->q_w, ly->k_w, ly->v_w, ly->g_w};
                float *const out[4] = {q, k, v, g};
                const int64_t n[4] = {D, D, VD, VD};
                linear_team_shared(u, B, D, w, out, n, 4);
            }
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) {
                const int64_t b = bh / H, h = bh % H;
                float *qh = q + b * D + h * DK, *kh = k + b * D + h * DK;
                for (int64_t i = 0; i < DK; i++) kh[i] *= kscale;
                rotate_pairs(qh, rot + b * 2 * DK, DK);
                rotate_pairs(kh, rot + b * 2 * DK, DK);
                retain_head(qh, kh, v + b * VD + h * DV, g + b * VD + h * DV, ly->state + bh * DK * DV,
                            ly->scale + bh, ly->gamma[h], DK, DV, reps, y + b * VD + h * DV);
            }
            linear_team(y, B, VD, ly->out_w, 0, x, D, 1); /* x += W_O y */
            norm_rows(x, u, B, D, NORM_RMS, eps, ly->norm2_w, 0);
            {
                const float *const w[2] = {ly->fc1_w, ly->gate_w};
                float *const out[2] = {f1, gate};
                const int64_t n[2] = {F, F};
                linear_team_shared(u, B, D, w, out, n, 2);
            }
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) activate(hid + b * F, f1 + b * F, gate + b * F, F, (int)m->act);
            linear_team(hid, B, F, ly->fc2_w, 0, x, D, 1); /* x += fc2(act(fc1 u) ⊙ gate u) */
        }
        norm_rows(x, u, B, D, NORM_RMS, eps, m->final_w, 0);
        linear_team(u, B, D, m->head_w, m->head_b, logits, m->vocab, 0);
    }
    return 0;
}
